"""The report: figures (``figures`` and its parts), LaTeX tables and number macros
(``tables``, ``numbers``, ``latex``) and the paper (``paper``)."""
