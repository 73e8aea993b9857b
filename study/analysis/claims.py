"""The claims of ../shared/CLAIMS.md as pre-declared hypotheses: read this table alone to
review what the study tests, where, against what, and what effect would matter.

Each row says which table (``study.analysis.outcomes.FRAME_KEYS``) and outcome
(``study.analysis.outcomes.OUTCOMES``) it compares, how (``study.analysis.comparisons``:
Compare, Ends, Level, DepthTrend, Spread), its *form* (superiority, non-inferiority, level)
and *margin* (the smallest effect that matters, with its reason), and the *target*: the
population where the article makes the claim (``where``, ``min_depth``), split into
``strata`` that are judged one by one; the levels of each group of ``secondary`` axes are
reported beside the target, never pooled into it. How a row is judged, and a claim from its
rows: ``study.analysis.verdicts``. "Keeps gradients alive/stable" is ``flatness`` (distance
from flat); "larger" is a signed value. Trainability is read at each configuration's best
learning rate of the sweep (chosen on validation), a diverged run scoring chance.
"""

from __future__ import annotations

from study.analysis.comparisons import Compare, DepthTrend, Ends, Level, Spread
from study.analysis.verdicts import Hypothesis
from study.engine.nets import family

PLAIN = {"norm": ("none",), "skip": ("none",)}
DEEP = 16  # "deep": the depths at which the articles make their claims
SATURATING = family("saturating")
RELU_FAMILY = family("relu")
# He et al. (2015) derived their init, 2/(1 + a^2), for these rectifiers (a: negative slope)
RECTIFIERS = ("relu", "leaky_relu", "prelu")
XAVIER = ("xavier_normal", "xavier_uniform")
HE = ("kaiming_normal", "kaiming_uniform")
RESIDUAL_KINDS = ("residual", "residual/sqrt(L)", "rezero")  # outcomes.branch
RESIDUAL_BN = {"norm": ("batch",), "skip": ("residual",)}  # where 002 puts C15 and C16
NO_DROPOUT, DROPOUT = ("0.0",), ("0.1", "0.3")  # the regularize sweep's rates, as levels

# The margins: the smallest effect each kind of outcome must show to matter, and why.
RATE = 0.02, "0.02 decades/layer: over 16 layers a factor 2 in the input-side gradient"
RATIO = 0.5, "0.5 decades: a factor 3 between the input- and output-side gradients"
ACCURACY = 0.05, ("5 points of test accuracy: what a practitioner would choose a method "
                  "for, several times a cell's seed error")  # fmt: skip
SMALL_ACCURACY = 0.025, ("2.5 points of accuracy: a quarter of the 10-point gap the "
                         "overfitting task leaves without dropout")  # fmt: skip
GAP = 0.025, "2.5 points of generalization gap: a quarter of the gap without dropout"
FINITE = 0.1, "one run in ten diverging: a setting a practitioner would notice"
DEAD = 0.02, "2% of the units dead for good: a few per layer of width 64"
CENTRED = 0.02, "|mean| of 2% of the RMS: what batch statistics resolve at batch 64"
STEPS = 25, ("25 steps: five evaluations, a tenth of the time a configuration takes to "
             "the target in the train sweep")  # fmt: skip
LR = 0.25, "0.25 decades: a factor 1.8 in the learning rate, half the grid's spacing"
SPREAD = 0.02, "2 points of accuracy beyond the 5-point bar the claim sets"
BETA = 0.1, "a tenth of the exponent's range from a power law (0.3) to exponential (1)"
# C5: |log10 g_1/g_L| grows like (depth - 1)^beta. Exponential decay has beta = 1, a power
# law in depth about 0.3 (tanh + Xavier's q_l -> 0 like 1/l); "sub-exponential" is below
# the midpoint.
SUB_EXPONENTIAL = 0.65


def margin(kind: tuple) -> dict:
    return {"margin": kind[0], "why": kind[1]}


# fmt: off
HYPOTHESES: list[Hypothesis] = [
    Hypothesis("C1", "C1", "Plain nets: the input-side gradient shrinks relative to the output "
               "side, more so the deeper the net", "000, 002",
               "init", "first_last", Ends("depth", smallest_first=True), "superiority",
               **margin(RATIO), where=PLAIN, strata=("phase",),
               secondary=(("norm", "skip"),)),
    Hypothesis("C2", "C2a", "Deep plain nets: the ReLU family keeps gradients closer to flat "
               "than sigmoid", "000, 002",
               "init", "flatness", Compare("activation", RELU_FAMILY, ("sigmoid",)),
               "superiority", **margin(RATE), where=PLAIN, min_depth=DEEP,
               secondary=(("norm", "skip"),)),
    Hypothesis("C2", "C2b", "Deep plain nets: the ReLU family keeps gradients closer to flat "
               "than tanh", "000, 002",
               "init", "flatness", Compare("activation", RELU_FAMILY, ("tanh",)),
               "superiority", **margin(RATE), where=PLAIN, min_depth=DEEP,
               secondary=(("norm", "skip"),)),
    Hypothesis("C3", "C3a", "Plain nets end training with more dead units with ReLU than with "
               "leaky ReLU", "002",
               "train", "dead_final", Compare("activation", ("relu",), ("leaky_relu",)),
               "superiority", **margin(DEAD), where=PLAIN, secondary=(("norm", "skip"),)),
    Hypothesis("C3", "C3b", "Plain nets end training with more dead units with ReLU than with "
               "PReLU", "002",
               "train", "dead_final", Compare("activation", ("relu",), ("prelu",)),
               "superiority", **margin(DEAD), where=PLAIN, secondary=(("norm", "skip"),)),
    Hypothesis("C4", "C4a", "ELU keeps mean activations closer to zero than ReLU", "002",
               "train", "relative_mean_final", Compare("activation", ("relu",), ("elu",)),
               "superiority", **margin(CENTRED), where=PLAIN,
               secondary=(("norm", "skip"),)),
    Hypothesis("C4", "C4b", "ELU reaches the target accuracy in fewer steps than ReLU", "002",
               "train", "steps_needed", Compare("activation", ("elu",), ("relu",)),
               "superiority", **margin(STEPS), where=PLAIN, secondary=(("norm", "skip"),),
               also=("reached",), direction=-1),
    Hypothesis("C5", "C5a", "Xavier init keeps the gradient from decaying exponentially "
               "with depth in sigmoid and tanh nets", "002",
               "init_runs", "signal_rate", DepthTrend(), "level", **margin(BETA),
               where={**PLAIN, "activation": SATURATING, "init": ("xavier_normal",)},
               strata=("activation",), secondary=(("init",),),
               also=("weight_rate", "activation_rms_rate"), null=SUB_EXPONENTIAL,
               direction=-1),
    Hypothesis("C5", "C5b", "For sigmoid and tanh, Xavier init keeps gradients closer to flat "
               "than PyTorch's default init", "002",
               "init", "flatness", Compare("init", XAVIER, ("default",)), "superiority",
               **margin(RATE), where={**PLAIN, "activation": SATURATING},
               secondary=(("norm", "skip"),)),
    Hypothesis("C6", "C6a", "Deep plain rectifier nets (ReLU, leaky ReLU, PReLU): He init "
               "keeps gradients closer to flat than Xavier", "002",
               "init", "flatness", Compare("init", HE, XAVIER), "superiority",
               **margin(RATE), where={**PLAIN, "activation": RECTIFIERS}, min_depth=DEEP,
               secondary=(("norm", "skip"), ("activation",))),
    Hypothesis("C6", "C6b", "Deep plain rectifier nets: He init trains to a higher accuracy "
               "than Xavier", "002",
               "train", "accuracy", Compare("init", ("kaiming_normal",), ("xavier_normal",)),
               "superiority", **margin(ACCURACY),
               where={**PLAIN, "activation": RECTIFIERS}, min_depth=DEEP,
               secondary=(("norm", "skip"), ("activation",))),
    Hypothesis("C6", "C6c", "Deep plain rectifier nets: He init diverges no more often than "
               "Xavier, each at its best learning rate", "002",
               "train", "finite_chosen",
               Compare("init", ("kaiming_normal",), ("xavier_normal",)), "non-inferiority",
               **margin(FINITE), where={**PLAIN, "activation": RECTIFIERS}, min_depth=DEEP,
               secondary=(("norm", "skip"), ("activation",))),
    Hypothesis("C7", "C7a", "Deep nets without skips: batch norm keeps gradients closer to "
               "flat at init", "002",
               "init", "flatness", Compare("norm", ("batch",), ("none",)), "superiority",
               **margin(RATE), where={"skip": ("none",)}, min_depth=DEEP,
               strata=("init_quality",), secondary=(("skip",),)),
    Hypothesis("C7", "C7b", "Deep nets without skips: batch norm trains to a higher accuracy",
               "002",
               "train", "accuracy", Compare("norm", ("batch",), ("none",)), "superiority",
               **margin(ACCURACY), where={"skip": ("none",)}, min_depth=DEEP,
               strata=("init_quality",), secondary=(("skip",),)),
    Hypothesis("C7", "C7c", "Deep nets without skips: batch norm diverges on less of the "
               "learning-rate grid", "002",
               "train", "finite", Compare("norm", ("batch",), ("none",)), "superiority",
               **margin(FINITE), where={"skip": ("none",)}, min_depth=DEEP,
               strata=("init_quality",), secondary=(("skip",),)),
    Hypothesis("C8", "C8", "Batch norm raises the largest stable learning rate", "002",
               "lr_range", "max_stable_log10_lr", Compare("norm", ("batch",), ("none",)),
               "superiority", **margin(LR), where={"skip": ("none",)},
               secondary=(("skip",),)),
    Hypothesis("C9", "C9a", "Deep nets: residual connections keep input-side gradients larger "
               "than in the plain net", "000, 002",
               "init", "first_last", Compare("branch", RESIDUAL_KINDS, ("none",)),
               "superiority", **margin(RATIO), min_depth=DEEP, strata=("norm",),
               also=("flatness",)),
    Hypothesis("C9", "C9b", "Residual nets lose less accuracy from the shallowest to the "
               "deepest depth than plain nets", "002",
               "degradation", "depth_accuracy_gap",
               Compare("branch", RESIDUAL_KINDS, ("none",)), "superiority",
               **margin(ACCURACY), strata=("norm",)),
    Hypothesis("C9", "C9c", "Deep residual nets diverge no more often than plain nets, each at "
               "its best learning rate", "002",
               "train", "finite_chosen", Compare("branch", RESIDUAL_KINDS, ("none",)),
               "non-inferiority", **margin(FINITE), min_depth=DEEP, strata=("norm",)),
    Hypothesis("C10", "C10a", "Deep nets without norm: dense connectivity keeps gradients "
               "closer to flat", "002",
               "init", "flatness", Compare("skip", ("dense",), ("none",)), "superiority",
               **margin(RATE), where={"norm": ("none",)}, min_depth=DEEP,
               secondary=(("norm",),)),
    Hypothesis("C10", "C10b", "Deep nets without norm: highway connections keep gradients "
               "closer to flat", "002",
               "init", "flatness", Compare("skip", ("highway",), ("none",)), "superiority",
               **margin(RATE), where={"norm": ("none",)}, min_depth=DEEP,
               secondary=(("norm",),)),
    Hypothesis("C11", "C11a", "Layer norm with residual connections keeps gradients closer to "
               "flat than residual connections alone", "002",
               "init", "flatness", Compare("norm_skip", ("layer+residual",), ("none+residual",)),
               "superiority", **margin(RATE), min_depth=DEEP),
    Hypothesis("C11", "C11b", "Layer norm with residual connections keeps gradients closer to "
               "flat than layer norm alone", "002",
               "init", "flatness", Compare("norm_skip", ("layer+residual",), ("layer+none",)),
               "superiority", **margin(RATE), min_depth=DEEP),
    Hypothesis("C12", "C12a", "AdamW with clipping diverges on less of the learning-rate grid "
               "than SGD", "002",
               "lr_range", "finite", Compare("setup", ("adamw+clip",), ("sgd",)),
               "superiority", **margin(FINITE)),
    Hypothesis("C12", "C12b", "AdamW with clipping reaches the target in fewer steps than SGD "
               "(each at its best learning rate of the grid, chosen on validation)", "002",
               "lr_range", "steps_needed", Compare("setup", ("adamw+clip",), ("sgd",)),
               "superiority", **margin(STEPS), also=("reached",), direction=-1),
    Hypothesis("C12", "C12c", "With AdamW and clipping, Xavier init reaches the target in fewer "
               "steps than the other inits", "002",
               "lr_range", "steps_needed",
               Compare("init", ("xavier_normal",), ("default", "kaiming_normal")),
               "superiority", **margin(STEPS), where={"setup": ("adamw+clip",)},
               secondary=(("setup",),), direction=-1),
    Hypothesis("C13", "C13a", "In residual nets the init still matters: the best init beats "
               f"the worst by more than {ACCURACY[0]} accuracy", "000",
               "optim_runs", "accuracy", Spread("init"), "level", **margin(SPREAD),
               where={"skip": ("residual",)}, secondary=(("skip",),), null=ACCURACY[0]),
    Hypothesis("C13", "C13b", "In residual nets the learning rate still matters: the best "
               f"rate beats the worst by more than {ACCURACY[0]} accuracy", "000",
               "optim_runs", "accuracy", Spread("lr"), "level", **margin(SPREAD),
               where={"skip": ("residual",)}, secondary=(("skip",),), null=ACCURACY[0]),
    Hypothesis("C14", "C14a", "In residual nets, small inputs still shrink the gradients",
               "000",
               "scale_shrink", "weight_grad_shrink", Level(), "level", **margin(RATIO),
               where={"skip": ("residual",)}, secondary=(("skip",),)),
    Hypothesis("C14", "C14b", "Small inputs shrink the gradients of residual nets less than "
               "those of plain nets", "000",
               "scale_shrink", "weight_grad_shrink", Compare("skip", ("none",), ("residual",)),
               "superiority", **margin(RATIO)),
    Hypothesis("C15", "C15a", "In residual nets with batch norm, dropout narrows the "
               "generalization gap", "002",
               "regularize", "gap", Compare("dropout", DROPOUT, NO_DROPOUT), "superiority",
               **margin(GAP), where=RESIDUAL_BN, secondary=(("norm", "skip"),),
               direction=-1),
    Hypothesis("C15", "C15b", "In residual nets with batch norm, dropout raises the test "
               "accuracy (each configuration at its best learning rate)", "002",
               "regularize", "accuracy", Compare("dropout", DROPOUT, NO_DROPOUT),
               "superiority", **margin(SMALL_ACCURACY), where=RESIDUAL_BN,
               secondary=(("norm", "skip"),), also=("finite",)),
    Hypothesis("C16", "C16a", "In residual nets with batch norm, a curriculum (the easiest "
               "examples first) reaches the target accuracy in fewer steps than random order",
               "002",
               "curriculum", "steps_needed", Compare("curriculum", ("linear",), ("none",)),
               "superiority", **margin(STEPS), where=RESIDUAL_BN, strata=("label_noise",),
               secondary=(("norm", "skip"),), also=("reached",), direction=-1),
    Hypothesis("C16", "C16b", "In residual nets with batch norm, a curriculum diverges no "
               "more often than random order, each at its best learning rate", "002",
               "curriculum", "finite_chosen", Compare("curriculum", ("linear",), ("none",)),
               "non-inferiority", **margin(FINITE), where=RESIDUAL_BN,
               strata=("label_noise",), secondary=(("norm", "skip"),)),
    Hypothesis("C16", "C16c", "In residual nets with batch norm, a curriculum ends with a "
               "higher test accuracy than random order", "002",
               "curriculum", "accuracy", Compare("curriculum", ("linear",), ("none",)),
               "superiority", **margin(SMALL_ACCURACY), where=RESIDUAL_BN,
               strata=("label_noise",), secondary=(("norm", "skip"),),
               also=("train_loss",)),
    Hypothesis("C17", "C17a", "Without dropout, batch norm narrows the generalization gap",
               "002",
               "regularize", "gap", Compare("norm", ("batch",), ("none",)), "superiority",
               **margin(GAP), where={"dropout": NO_DROPOUT}, secondary=(("dropout",),),
               direction=-1),
    Hypothesis("C17", "C17b", "Batch norm reduces the need for dropout: dropout adds less "
               "test accuracy with batch norm than without", "002",
               "dropout_gain", "accuracy_gain", Compare("norm", ("none",), ("batch",)),
               "superiority", **margin(SMALL_ACCURACY)),
    Hypothesis("C18", "C18a", "Without dropout, residual connections narrow the "
               "generalization gap (same budget)", "002",
               "regularize", "gap", Compare("skip", ("residual",), ("none",)), "superiority",
               **margin(GAP), where={"dropout": NO_DROPOUT}, secondary=(("dropout",),),
               direction=-1),
    Hypothesis("C18", "C18b", "Without dropout, residual connections reach a higher "
               "validation accuracy at the same training loss (generalization, not fit)",
               "002",
               "regularize", "val_at_matched_loss", Compare("skip", ("residual",), ("none",)),
               "superiority", **margin(SMALL_ACCURACY), where={"dropout": NO_DROPOUT},
               secondary=(("dropout",),), also=("accuracy",)),
    Hypothesis("C19", "C19a", "Plain nets: the ReLU family reaches the target accuracy in "
               "fewer steps than sigmoid (each at its best learning rate)", "002",
               "train", "steps_needed", Compare("activation", RELU_FAMILY, ("sigmoid",)),
               "superiority", **margin(STEPS), where=PLAIN, secondary=(("norm", "skip"),),
               also=("reached",), direction=-1),
    Hypothesis("C19", "C19b", "Plain nets: the ReLU family reaches the target accuracy in "
               "fewer steps than tanh (each at its best learning rate)", "002",
               "train", "steps_needed", Compare("activation", RELU_FAMILY, ("tanh",)),
               "superiority", **margin(STEPS), where=PLAIN, secondary=(("norm", "skip"),),
               also=("reached",), direction=-1),
]
# fmt: on
