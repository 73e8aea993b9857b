"""The claims of ../shared/CLAIMS.md as pre-declared hypotheses: read this table alone to
review what the study tests, where, and against what.

Each row says which table (``study.analysis.outcomes.FRAME_KEYS``) and outcome
(``study.analysis.outcomes.OUTCOMES``) it compares, how (``study.analysis.comparisons``:
Compare, Ends, Level, DepthTrend, Spread), and the *target*: the population where the article
makes the claim (``where``, ``min_depth``), split into ``strata`` that are judged one by one.
Inside a stratum, the levels of every axis it pools must not point both ways by more than
``min_effect`` (else the stratum is ``mixed``); the other levels of each group of
``secondary`` axes are reported beside the target, never pooled into it. "Keeps gradients
alive/stable" is ``flatness`` (distance from flat); "larger" is a signed value.
Trainability is the accuracy of the runs that finished, with ``finite`` (1 - divergence
rate) as a part of its own, each configuration at its best learning rate of the sweep
(``study.analysis.outcomes.best_lr``, chosen on validation accuracy).
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
RATE = 0.02  # decades/layer: the smallest per-layer difference that counts
RATIO = 0.5  # decades: the smallest first/last or gradient-level difference that counts
ACCURACY = 0.05
STEPS = 25  # one evaluation interval of the training sweeps
STEPS_CURRICULUM = 10  # ... of the curriculum sweep
RESIDUAL_BN = {"norm": ("batch",), "skip": ("residual",)}  # where 002 puts C15 and C16
NO_DROPOUT, DROPOUT = ("0.0",), ("0.1", "0.3")  # the regularize sweep's rates, as levels
# C5: |log10 g_1/g_L| grows like (depth - 1)^beta. Exponential decay has beta = 1, a power
# law in depth about 0.3 (tanh + Xavier's q_l -> 0 like 1/l); "sub-exponential" is below
# the midpoint.
SUB_EXPONENTIAL = 0.65

# fmt: off
HYPOTHESES: list[Hypothesis] = [
    Hypothesis("C1", "C1", "Plain nets: the input-side gradient shrinks relative to the output "
               "side, more so the deeper the net", "000, 002",
               "init", "first_last", Ends("depth", smallest_first=True), where=PLAIN,
               strata=("family",), secondary=(("norm", "skip"),),
               min_effect=RATIO),
    Hypothesis("C2", "C2a", "Deep plain nets: the ReLU family keeps gradients closer to flat "
               "than sigmoid", "000, 002",
               "init", "flatness", Compare("activation", RELU_FAMILY, ("sigmoid",)),
               where=PLAIN, min_depth=DEEP, secondary=(("norm", "skip"),), min_effect=RATE),
    Hypothesis("C2", "C2b", "Deep plain nets: the ReLU family keeps gradients closer to flat "
               "than tanh", "000, 002",
               "init", "flatness", Compare("activation", RELU_FAMILY, ("tanh",)),
               where=PLAIN, min_depth=DEEP, secondary=(("norm", "skip"),), min_effect=RATE),
    Hypothesis("C3", "C3", "Plain ReLU nets end training with more dead units than leaky "
               "ReLU / PReLU nets", "002",
               "train", "dead_final", Compare("activation", ("relu",), ("leaky_relu", "prelu")),
               where=PLAIN, secondary=(("norm", "skip"),),
               min_effect=0.02),
    Hypothesis("C4", "C4a", "ELU keeps mean activations closer to zero than ReLU", "002",
               "train", "relative_mean_final", Compare("activation", ("relu",), ("elu",)),
               where=PLAIN, secondary=(("norm", "skip"),),
               min_effect=0.02),
    Hypothesis("C4", "C4b", "ELU reaches the target accuracy in fewer steps than ReLU", "002",
               "train", "steps_needed", Compare("activation", ("elu",), ("relu",)),
               where=PLAIN, secondary=(("norm", "skip"),),
               direction=-1, min_effect=STEPS),
    Hypothesis("C5", "C5a", "Xavier init keeps the gradient from decaying exponentially "
               "with depth in sigmoid and tanh nets", "002",
               "init_runs", "signal_rate", DepthTrend(),
               where={**PLAIN, "activation": SATURATING, "init": ("xavier_normal",)},
               strata=("activation",), secondary=(("init",),),
               also=("weight_rate", "activation_rms_rate"), null=SUB_EXPONENTIAL,
               direction=-1),
    Hypothesis("C5", "C5b", "For sigmoid and tanh, Xavier init keeps gradients closer to flat "
               "than PyTorch's default init", "002",
               "init", "flatness", Compare("init", XAVIER, ("default",)),
               where={**PLAIN, "activation": SATURATING}, secondary=(("norm", "skip"),),
               min_effect=RATE),
    Hypothesis("C6", "C6a", "Deep plain rectifier nets (ReLU, leaky ReLU, PReLU): He init "
               "keeps gradients closer to flat than Xavier", "002",
               "init", "flatness", Compare("init", HE, XAVIER),
               where={**PLAIN, "activation": RECTIFIERS}, min_depth=DEEP,
               secondary=(("norm", "skip"), ("activation",)),
               min_effect=RATE),
    Hypothesis("C6", "C6b", "Deep plain rectifier nets: He init trains to a higher accuracy "
               "than Xavier", "002",
               "train", "accuracy", Compare("init", ("kaiming_normal",), ("xavier_normal",)),
               where={**PLAIN, "activation": RECTIFIERS}, min_depth=DEEP,
               secondary=(("norm", "skip"), ("activation",)),
               min_effect=ACCURACY),
    Hypothesis("C6", "C6c", "Deep plain rectifier nets: He init diverges no more often than "
               "Xavier", "002",
               "train", "finite", Compare("init", ("kaiming_normal",), ("xavier_normal",)),
               where={**PLAIN, "activation": RECTIFIERS}, min_depth=DEEP,
               secondary=(("norm", "skip"), ("activation",)),
               min_effect=0.1),
    Hypothesis("C7", "C7a", "Deep nets without skips: batch norm keeps gradients closer to "
               "flat at init", "002",
               "init", "flatness", Compare("norm", ("batch",), ("none",)),
               where={"skip": ("none",)}, min_depth=DEEP, strata=("init_quality",),
               secondary=(("skip",),), min_effect=RATE),
    Hypothesis("C7", "C7b", "Deep nets without skips: batch norm trains to a higher accuracy",
               "002",
               "train", "accuracy", Compare("norm", ("batch",), ("none",)),
               where={"skip": ("none",)}, min_depth=DEEP, strata=("init_quality",),
               secondary=(("skip",),), min_effect=ACCURACY),
    Hypothesis("C7", "C7c", "Deep nets without skips: batch norm diverges less often", "002",
               "train", "finite", Compare("norm", ("batch",), ("none",)),
               where={"skip": ("none",)}, min_depth=DEEP, strata=("init_quality",),
               secondary=(("skip",),), min_effect=0.1),
    Hypothesis("C8", "C8", "Batch norm raises the largest stable learning rate", "002",
               "lr_range", "max_stable_log10_lr", Compare("norm", ("batch",), ("none",)),
               where={"skip": ("none",)}, secondary=(("skip",),),
               min_effect=0.25),
    Hypothesis("C9", "C9a", "Deep nets: residual connections keep input-side gradients larger "
               "than in the plain net", "000, 002",
               "init", "first_last", Compare("skip", ("residual",), ("none",)),
               min_depth=DEEP, strata=("norm",), also=("flatness",), min_effect=RATIO),
    Hypothesis("C9", "C9b", "Residual nets lose less accuracy from the shallowest to the "
               "deepest depth than plain nets", "002",
               "degradation", "depth_accuracy_gap", Compare("skip", ("residual",), ("none",)),
               strata=("norm",), min_effect=ACCURACY),
    Hypothesis("C9", "C9c", "Deep residual nets diverge no more often than plain nets", "002",
               "train", "finite", Compare("skip", ("residual",), ("none",)),
               min_depth=DEEP, strata=("norm",), min_effect=0.1),
    Hypothesis("C10", "C10a", "Deep nets without norm: dense connectivity keeps gradients "
               "closer to flat", "002",
               "init", "flatness", Compare("skip", ("dense",), ("none",)),
               where={"norm": ("none",)}, min_depth=DEEP, secondary=(("norm",),), min_effect=RATE),
    Hypothesis("C10", "C10b", "Deep nets without norm: highway connections keep gradients "
               "closer to flat", "002",
               "init", "flatness", Compare("skip", ("highway",), ("none",)),
               where={"norm": ("none",)}, min_depth=DEEP, secondary=(("norm",),), min_effect=RATE),
    Hypothesis("C11", "C11a", "Layer norm with residual connections keeps gradients closer to "
               "flat than residual connections alone", "002",
               "init", "flatness", Compare("norm_skip", ("layer+residual",), ("none+residual",)),
               min_depth=DEEP, min_effect=RATE),
    Hypothesis("C11", "C11b", "Layer norm with residual connections keeps gradients closer to "
               "flat than layer norm alone", "002",
               "init", "flatness", Compare("norm_skip", ("layer+residual",), ("layer+none",)),
               min_depth=DEEP, min_effect=RATE),
    Hypothesis("C12", "C12a", "AdamW with clipping diverges on less of the learning-rate grid "
               "than SGD", "002",
               "lr_range", "finite", Compare("setup", ("adamw+clip",), ("sgd",)),
               min_effect=0.1),
    Hypothesis("C12", "C12b", "AdamW with clipping reaches the target in fewer steps than SGD "
               "(each at its best learning rate of the grid, chosen on validation)", "002",
               "lr_range", "steps_needed", Compare("setup", ("adamw+clip",), ("sgd",)),
               direction=-1, min_effect=STEPS),
    Hypothesis("C12", "C12c", "With AdamW and clipping, Xavier init reaches the target in fewer "
               "steps than the other inits", "002",
               "lr_range", "steps_needed",
               Compare("init", ("xavier_normal",), ("default", "kaiming_normal")),
               where={"setup": ("adamw+clip",)}, secondary=(("setup",),), direction=-1,
               min_effect=STEPS),
    Hypothesis("C13", "C13a", f"In residual nets the init still matters: the best init beats "
               f"the worst by more than {ACCURACY} accuracy", "000",
               "optim_runs", "accuracy", Spread("init"), where={"skip": ("residual",)},
               secondary=(("skip",),), null=ACCURACY,
               min_effect=0.02),
    Hypothesis("C13", "C13b", f"In residual nets the learning rate still matters: the best "
               f"rate beats the worst by more than {ACCURACY} accuracy", "000",
               "optim_runs", "accuracy", Spread("lr"), where={"skip": ("residual",)},
               secondary=(("skip",),), null=ACCURACY,
               min_effect=0.02),
    Hypothesis("C14", "C14a", "In residual nets, small inputs still shrink the gradients",
               "000",
               "scale_shrink", "weight_grad_shrink", Level(), where={"skip": ("residual",)},
               secondary=(("skip",),), min_effect=RATIO),
    Hypothesis("C14", "C14b", "Small inputs shrink the gradients of residual nets less than "
               "those of plain nets", "000",
               "scale_shrink", "weight_grad_shrink", Compare("skip", ("none",), ("residual",)),
               min_effect=RATIO),
    Hypothesis("C15", "C15a", "In residual nets with batch norm, dropout narrows the "
               "generalization gap", "002",
               "regularize", "gap", Compare("dropout", DROPOUT, NO_DROPOUT),
               where=RESIDUAL_BN, secondary=(("norm", "skip"),), direction=-1,
               min_effect=ACCURACY / 2),
    Hypothesis("C15", "C15b", "In residual nets with batch norm, dropout raises the test "
               "accuracy (each configuration at its best learning rate)", "002",
               "regularize", "accuracy", Compare("dropout", DROPOUT, NO_DROPOUT),
               where=RESIDUAL_BN, secondary=(("norm", "skip"),), also=("finite",),
               min_effect=ACCURACY / 2),
    Hypothesis("C16", "C16a", "In residual nets with batch norm, a curriculum (the easiest "
               "examples first) reaches the target accuracy in fewer steps than random order",
               "002",
               "curriculum", "steps_needed", Compare("curriculum", ("linear",), ("none",)),
               where=RESIDUAL_BN, secondary=(("norm", "skip"),), direction=-1,
               min_effect=STEPS_CURRICULUM),
    Hypothesis("C16", "C16b", "In residual nets with batch norm, a curriculum diverges no "
               "more often than random order (over the learning-rate grid)", "002",
               "curriculum", "finite", Compare("curriculum", ("linear",), ("none",)),
               where=RESIDUAL_BN, secondary=(("norm", "skip"),), min_effect=0.1),
    Hypothesis("C16", "C16c", "In residual nets with batch norm, a curriculum ends with a "
               "higher test accuracy than random order", "002",
               "curriculum", "accuracy", Compare("curriculum", ("linear",), ("none",)),
               where=RESIDUAL_BN, secondary=(("norm", "skip"),), also=("train_loss",),
               min_effect=ACCURACY / 2),
    Hypothesis("C17", "C17a", "Without dropout, batch norm narrows the generalization gap",
               "002",
               "regularize", "gap", Compare("norm", ("batch",), ("none",)),
               where={"dropout": NO_DROPOUT}, secondary=(("dropout",),), direction=-1,
               min_effect=ACCURACY / 2),
    Hypothesis("C17", "C17b", "Batch norm reduces the need for dropout: dropout adds less "
               "test accuracy with batch norm than without", "002",
               "dropout_gain", "accuracy_gain", Compare("norm", ("none",), ("batch",)),
               min_effect=ACCURACY / 2),
    Hypothesis("C18", "C18a", "Without dropout, residual connections narrow the "
               "generalization gap (same budget)", "002",
               "regularize", "gap", Compare("skip", ("residual",), ("none",)),
               where={"dropout": NO_DROPOUT}, secondary=(("dropout",),), direction=-1,
               min_effect=ACCURACY / 2),
    Hypothesis("C18", "C18b", "Without dropout, residual connections reach a higher "
               "validation accuracy at the same training loss (generalization, not fit)",
               "002",
               "regularize", "val_at_matched_loss", Compare("skip", ("residual",), ("none",)),
               where={"dropout": NO_DROPOUT}, secondary=(("dropout",),), also=("accuracy",),
               min_effect=ACCURACY / 2),
    Hypothesis("C19", "C19a", "Plain nets: the ReLU family reaches the target accuracy in "
               "fewer steps than sigmoid (each at its best learning rate)", "002",
               "train", "steps_needed", Compare("activation", RELU_FAMILY, ("sigmoid",)),
               where=PLAIN, secondary=(("norm", "skip"),), also=("train_loss",),
               direction=-1, min_effect=STEPS),
    Hypothesis("C19", "C19b", "Plain nets: the ReLU family reaches the target accuracy in "
               "fewer steps than tanh (each at its best learning rate)", "002",
               "train", "steps_needed", Compare("activation", RELU_FAMILY, ("tanh",)),
               where=PLAIN, secondary=(("norm", "skip"),), also=("train_loss",),
               direction=-1, min_effect=STEPS),
]
# fmt: on
