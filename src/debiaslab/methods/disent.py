import torch
import torch.nn.functional as F

from debiaslab.methods.losses import gce_from_ce
from debiaslab.methods.reweighting import RelativeDifficultyMethod


class DisEnt(RelativeDifficultyMethod):
    """Disentangled Feature Augmentation (Lee et al., NeurIPS 2021), algorithms.md steps 1-8.

    Two encoders (intrinsic ``E_i``, bias ``E_b``); each classifier sees ``[z_i, z_b]`` with the
    other branch's feature detached. After ``curr_step`` the bias features are swapped across the
    batch to synthesise bias-conflicting feature pairs.
    """

    name = "disent"
    model_names = ("intrinsic", "bias")
    head_inputs = 2

    def loss(self, x, y, idx, step):
        cfg = self.cfg
        m_i, m_b = self.models["intrinsic"], self.models["bias"]
        z_i, z_b = m_i.extract(x), m_b.extract(x)
        z_i_sg, z_b_sg = z_i.detach(), z_b.detach()
        ce_i = F.cross_entropy(m_i.fc(torch.cat([z_i, z_b_sg], 1)), y, reduction="none")
        ce_b = F.cross_entropy(m_b.fc(torch.cat([z_i_sg, z_b], 1)), y, reduction="none")
        w = self.weights(ce_b, ce_i, y, idx)
        loss_dis_conflict = (w * ce_i).mean()
        loss_dis_align = gce_from_ce(ce_b, cfg.q, cfg.gce_form).mean()
        loss = loss_dis_conflict + cfg.lambda_dis_align * loss_dis_align
        terms = {"loss_dis_conflict": loss_dis_conflict, "loss_dis_align": loss_dis_align}
        if step > cfg.curr_step:  # strictly greater, as in the reference
            perm = torch.randperm(len(y), generator=self.generator, device=self.generator.device).to(y.device)
            z_b_sw, y_sw = z_b[perm], y[perm]
            ce_sw_i = F.cross_entropy(m_i.fc(torch.cat([z_i, z_b_sw.detach()], 1)), y, reduction="none")
            ce_sw_b = F.cross_entropy(m_b.fc(torch.cat([z_i_sg, z_b_sw], 1)), y_sw, reduction="none")
            loss_swap_conflict = (w * ce_sw_i).mean()
            loss_swap_align = gce_from_ce(ce_sw_b, cfg.q, cfg.gce_form).mean()
            loss = loss + cfg.lambda_swap * (loss_swap_conflict + cfg.lambda_swap_align * loss_swap_align)
            terms.update(loss_swap_conflict=loss_swap_conflict, loss_swap_align=loss_swap_align)
        terms.update(loss=loss, w_mean=w.mean())
        return loss, terms

    @staticmethod
    def predict(models, x):
        z = torch.cat([models["intrinsic"].extract(x), models["bias"].extract(x)], 1)
        return models["intrinsic"].fc(z)
