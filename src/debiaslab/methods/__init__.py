"""Method registry: a new method is one module plus one line here."""

from debiaslab.methods.base import Method, StagePlan
from debiaslab.methods.bias_ensemble import DisEntBE, LfFBE
from debiaslab.methods.denetdm import DeNetDM
from debiaslab.methods.disent import DisEnt
from debiaslab.methods.groupdro import GroupDRO
from debiaslab.methods.jtt import JTT
from debiaslab.methods.lc import LC
from debiaslab.methods.lff import LfF
from debiaslab.methods.vanilla import Vanilla

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Vanilla, LfF, DisEnt, JTT, LC, GroupDRO, LfFBE, DisEntBE, DeNetDM)
}


def total_steps(cfg) -> int:
    """The steps of every stage of a run of ``cfg``: the last step its log and checkpoints reach."""
    return StagePlan(METHODS[cfg.method].stages(cfg.resolved())).total


__all__ = ["METHODS", "Method", "total_steps"]
