//! One optimiser step: forward + backward in micro-batches (halved after a CUDA out-of-memory),
//! mixed-precision loss scaling, gradient clipping, the step's RoI-sampler seed.

use std::collections::BTreeMap;

use tch::{Device, Tensor};

use super::setup::Session;
use crate::infer::panic_text;
use crate::model::Target;
use crate::rng::SplitMix64;
use crate::train::loader::Batch;

/// Losses of one step (weighted over micro-batches).
pub(super) struct StepLosses {
    pub(super) total: f64,
    pub(super) parts: BTreeMap<String, f64>,
    /// What became NaN/inf (`"loss"`, `"gradient norm"`) and its value; the step was not applied.
    pub(super) non_finite: Option<(&'static str, f64)>,
}

/// The seed of the RoI samplers in step `iter`: a pure function of the run seed and the step,
/// so a resumed run draws the same numbers (augmentation is seeded by the loader).
fn step_seed(seed: u64, iter: usize) -> u64 {
    SplitMix64::new(seed ^ (iter as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

fn is_out_of_memory(e: &anyhow::Error) -> bool {
    format!("{e:#}")
        .to_ascii_lowercase()
        .contains("out of memory")
}

impl Session {
    /// Forward + backward over `batch` in micro-batches of `micro` images, the loss of each
    /// weighted by its share of the batch (gradients accumulate). Returns early, without a
    /// backward pass, when a loss is not finite. Libtorch errors that surface as panics (CUDA
    /// out of memory in `backward`) come back as errors.
    fn accumulate(
        &self,
        batch: &Batch,
        micro: usize,
        loss_scale: f64,
    ) -> anyhow::Result<StepLosses> {
        let amp = self.state.loss_scaler.is_some();
        let run = || -> anyhow::Result<StepLosses> {
            let n = batch.len() as f64;
            let mut out = StepLosses {
                total: 0.0,
                parts: BTreeMap::new(),
                non_finite: None,
            };
            let micro = micro.max(1);
            // The batch stays on the CPU so an out-of-memory retry can split it again.
            for (images, targets) in batch.images.chunks(micro).zip(batch.targets.chunks(micro)) {
                let images: Vec<Tensor> = images.iter().map(|t| t.to_device(self.device)).collect();
                let targets: Vec<Target> =
                    targets.iter().map(|t| to_device(t, self.device)).collect();
                // The panic is caught inside `autocast` so its nesting is always restored.
                let forward = crate::profile::scope("forward");
                let losses = tch::autocast(amp, || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.model.forward_train(&images, &targets)
                    }))
                })
                .map_err(|p| anyhow::anyhow!("libtorch: {}", panic_text(&*p)))??;
                let weight = images.len() as f64 / n;
                let total_t = losses.total();
                let total = total_t.double_value(&[]);
                drop(forward);
                out.total += weight * total;
                for (k, v) in losses.to_map() {
                    *out.parts.entry(k).or_default() += weight * v;
                }
                if !total.is_finite() {
                    out.non_finite = Some(("loss", total));
                    return Ok(out);
                }
                crate::profile::timed("backward", || {
                    (total_t * (weight * loss_scale)).f_backward()
                })?;
            }
            Ok(out)
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(p) => Err(anyhow::anyhow!("libtorch: {}", panic_text(&*p))),
        }
    }

    /// One optimiser step on `batch` (not applied when a value is not finite, or when mixed
    /// precision overflowed). The RoI samplers are seeded from the step; the batch's
    /// augmentation was seeded by the loader from its epoch and position.
    pub(super) fn step(&mut self, batch: &Batch, lr: f64) -> anyhow::Result<StepLosses> {
        let iter = self.state.iter;
        let seed = step_seed(self.cfg.seed, iter);
        let losses = loop {
            crate::profile::timed("zero_grad", || self.opt.zero_grad());
            self.model.seed(seed);
            let scale = self.state.loss_scaler.map_or(1.0, |s| s.scale);
            match self.accumulate(batch, self.state.micro_batch, scale) {
                Ok(l) => break l,
                Err(e)
                    if self.device.is_cuda()
                        && is_out_of_memory(&e)
                        && self.state.micro_batch > 1 =>
                {
                    // Retry the same step in smaller pieces (same effective batch).
                    self.opt.zero_grad();
                    self.state.micro_batch = self.state.micro_batch.div_ceil(2);
                    log::warn!(
                        "CUDA out of memory at step {iter}; retrying with {} images per forward pass",
                        self.state.micro_batch
                    );
                }
                Err(e) => return Err(e.context(format!("step {iter}"))),
            }
        };
        if losses.non_finite.is_some() {
            return Ok(losses);
        }
        let mut apply = true;
        if let Some(scaler) = &mut self.state.loss_scaler {
            apply = scaler.unscale_and_check(&mut self.opt);
            if !apply {
                log::warn!(
                    "mixed precision overflow at step {iter}: step skipped, loss scale now {}",
                    scaler.scale
                );
            }
        }
        if apply {
            if let Some(max) = self.cfg.clip_grad_norm {
                let norm = self.opt.clip_grad_norm(max);
                if !norm.is_finite() {
                    return Ok(StepLosses {
                        non_finite: Some(("gradient norm", norm)),
                        ..losses
                    });
                }
            }
            crate::profile::timed("optimizer", || self.opt.step(lr));
        }
        Ok(losses)
    }
}

fn to_device(t: &Target, device: Device) -> Target {
    Target {
        boxes: t.boxes.to_device(device),
        labels: t.labels.to_device(device),
        masks: t.masks.to_device(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_randomness_depends_only_on_seed_and_step() {
        assert_eq!(step_seed(3, 10), step_seed(3, 10));
        assert_ne!(step_seed(3, 10), step_seed(3, 11));
        assert_ne!(step_seed(3, 10), step_seed(4, 10));
    }
}
