//! Optimisers written on tensors so their state can be saved and restored exactly (SGD with
//! momentum, AdamW), gradient clipping by global norm, the learning-rate schedules, and a
//! dynamic loss scaler for mixed precision.
//!
//! The update rules are `torch.optim.SGD` (`maximize=False`, `dampening=0`, `nesterov=False`)
//! and `torch.optim.AdamW` (`amsgrad=False`) written out.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use crate::train::config::{OptimizerKind, ScheduleKind, TrainConfig};

/// The span of steps one schedule covers (a fresh run: all of it; `--continue-epochs`: the
/// added epochs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Global step at which the schedule starts.
    pub start: usize,
    /// Steps the schedule is planned for.
    pub total: usize,
    /// Steps per epoch (for epoch milestones) when `epoch_steps` is empty.
    pub steps_per_epoch: usize,
    /// Steps of each epoch of the schedule, in order (the loader's plan: aspect-ratio grouping
    /// and repeat factors make the count differ between epochs); empty: every epoch has
    /// `steps_per_epoch`.
    #[serde(default)]
    pub epoch_steps: Vec<usize>,
}

impl Schedule {
    /// Step (counted from `start`) at which epoch `m` of the schedule begins.
    fn epoch_start(&self, m: usize) -> usize {
        if self.epoch_steps.is_empty() {
            m * self.steps_per_epoch.max(1)
        } else {
            self.epoch_steps[..m.min(self.epoch_steps.len())]
                .iter()
                .sum()
        }
    }

    /// Number of epochs the schedule's `total` steps reach into.
    fn epochs(&self) -> usize {
        let total = self.total.max(1);
        if self.epoch_steps.is_empty() {
            total.div_ceil(self.steps_per_epoch.max(1))
        } else {
            (0..self.epoch_steps.len())
                .filter(|&m| self.epoch_start(m) < total)
                .count()
                .max(1)
        }
    }

    /// Learning rate of global step `iter`.
    pub fn lr(&self, cfg: &TrainConfig, iter: usize) -> f64 {
        let total = self.total.max(1);
        let i = iter.saturating_sub(self.start).min(total);
        if cfg.schedule == ScheduleKind::OneCycle {
            // fastai `fit_one_cycle`: cosine from lr/div up to lr, then cosine down to
            // lr/(div*final_div).
            let up = ((total as f64) * cfg.one_cycle_pct_start).round().max(1.0) as usize;
            let start = cfg.lr / cfg.one_cycle_div_factor;
            let end = start / cfg.one_cycle_final_div_factor;
            let cos = |a: f64, b: f64, p: f64| {
                b + (a - b) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            };
            return if i < up {
                cos(start, cfg.lr, i as f64 / up as f64)
            } else {
                let down = total.saturating_sub(up).max(1);
                cos(cfg.lr, end, ((i - up) as f64 / down as f64).min(1.0))
            };
        }
        let warmup = cfg.warmup_iters.min(total);
        if i < warmup {
            let alpha = i as f64 / warmup as f64;
            return cfg.lr * (cfg.warmup_factor * (1.0 - alpha) + alpha);
        }
        match cfg.schedule {
            ScheduleKind::Multistep => {
                let epochs = self.epochs();
                let milestones: Vec<usize> = if cfg.lr_milestones.is_empty() {
                    vec![(epochs * 2).div_ceil(3), (epochs * 8).div_ceil(9)]
                } else {
                    cfg.lr_milestones.clone()
                };
                let passed = milestones
                    .iter()
                    .filter(|&&m| i >= self.epoch_start(m))
                    .count();
                cfg.lr * cfg.lr_gamma.powi(passed as i32)
            }
            _ => {
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = ((i - warmup) as f64 / span).min(1.0);
                cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// One trainable variable and its optimiser state.
struct Param {
    name: String,
    tensor: Tensor,
    /// SGD: `[momentum_buffer]`; AdamW: `[exp_avg, exp_avg_sq]`; empty before the first update.
    state: Vec<Tensor>,
    /// Updates applied to this variable (AdamW bias correction).
    steps: u64,
}

/// SGD or AdamW over the variables that were trainable when it was built.
pub struct Optimizer {
    kind: OptimizerKind,
    params: Vec<Param>,
    momentum: f64,
    weight_decay: f64,
    betas: [f64; 2],
    eps: f64,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("kind", &self.kind)
            .field("params", &self.params.len())
            .finish_non_exhaustive()
    }
}

/// Suffixes of the state tensors in `optimizer.safetensors` (`<variable>::<suffix>`).
const STATE_NAMES: [[&str; 2]; 2] = [["momentum_buffer", ""], ["exp_avg", "exp_avg_sq"]];

impl Optimizer {
    /// Collects the variables of `vs` that require gradients now (sorted by name).
    pub fn new(vs: &nn::VarStore, cfg: &TrainConfig) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            kind: cfg.optimizer,
            params: vars
                .into_iter()
                .map(|(name, tensor)| Param {
                    name,
                    tensor,
                    state: Vec::new(),
                    steps: 0,
                })
                .collect(),
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            betas: cfg.adam_betas,
            eps: 1e-8,
        }
    }

    /// Names of the variables this optimiser updates.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// Sets `requires_grad` of the optimiser's variables whose name starts with `prefix`
    /// (freezing: a variable without a gradient is skipped by [`Self::step`], as in torch).
    pub fn set_trainable(&mut self, prefix: &str, trainable: bool) {
        for p in self.params.iter().filter(|p| p.name.starts_with(prefix)) {
            let _ = p.tensor.set_requires_grad(trainable);
        }
    }

    /// Clears the gradients (in place).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// Multiplies every gradient by `factor` (loss-scale removal, clipping).
    pub fn scale_grads(&mut self, factor: f64) {
        tch::no_grad(|| {
            for p in &self.params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(factor);
                }
            }
        });
    }

    /// Global L2 norm of the gradients (NaN/inf when any gradient is).
    pub fn grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            let mut sum = 0.0;
            for p in &self.params {
                let g = p.tensor.grad();
                if g.defined() {
                    sum += g
                        .to_kind(Kind::Double)
                        .square()
                        .sum(Kind::Double)
                        .double_value(&[]);
                }
            }
            sum.sqrt()
        })
    }

    /// `torch.nn.utils.clip_grad_norm_`: scales the gradients by `max / (norm + 1e-6)` when that
    /// is below 1; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let norm = self.grad_norm();
        let coef = max / (norm + 1e-6);
        if norm.is_finite() && coef < 1.0 {
            self.scale_grads(coef);
        }
        norm
    }

    /// One update with learning rate `lr` of every variable that has a gradient.
    pub fn step(&mut self, lr: f64) {
        let (kind, momentum, wd, [b1, b2], eps) = (
            self.kind,
            self.momentum,
            self.weight_decay,
            self.betas,
            self.eps,
        );
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() || !p.tensor.requires_grad() {
                    continue;
                }
                p.steps += 1;
                match kind {
                    OptimizerKind::Sgd => {
                        // d = g + wd * p; buf = momentum * buf + d (buf = d at first); p -= lr * buf
                        let d = if wd != 0.0 {
                            &g + p.tensor.detach() * wd
                        } else {
                            g.detach().copy()
                        };
                        let d = if momentum != 0.0 {
                            if let Some(buf) = p.state.first_mut() {
                                let _ = buf.g_mul_scalar_(momentum).g_add_(&d);
                                buf.shallow_clone()
                            } else {
                                p.state.push(d.shallow_clone());
                                d
                            }
                        } else {
                            d
                        };
                        let _ = p.tensor.g_add_(&(d * -lr));
                    }
                    OptimizerKind::Adamw => {
                        // p *= 1 - lr * wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g²;
                        // p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
                        if p.state.is_empty() {
                            p.state.push(g.zeros_like());
                            p.state.push(g.zeros_like());
                        }
                        let _ = p.tensor.g_mul_scalar_(1.0 - lr * wd);
                        let _ = p.state[0].g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                        let _ = p.state[1]
                            .g_mul_scalar_(b2)
                            .g_add_(&(g.square() * (1.0 - b2)));
                        let t = p.steps as i32;
                        let bc1 = 1.0 - b1.powi(t);
                        let bc2 = 1.0 - b2.powi(t);
                        let denom = (&p.state[1] / bc2).sqrt() + eps;
                        let _ = p.tensor.g_add_(&((&p.state[0] / denom) * (-lr / bc1)));
                    }
                }
            }
        });
    }

    /// Writes the optimiser state (`<variable>::<buffer>` tensors and `<variable>::step`) to a
    /// safetensors file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let names = STATE_NAMES[usize::from(self.kind == OptimizerKind::Adamw)];
        let mut out: Vec<(String, Tensor)> = Vec::new();
        for p in &self.params {
            if p.steps == 0 {
                continue;
            }
            out.push((
                format!("{}::step", p.name),
                Tensor::from_slice(&[p.steps as f64]),
            ));
            for (t, n) in p.state.iter().zip(names) {
                out.push((
                    format!("{}::{n}", p.name),
                    t.detach().to_device(tch::Device::Cpu),
                ));
            }
        }
        crate::model::checkpoint::write_safetensors(path, &out)
            .with_context(|| format!("writing the optimiser state {path:?}"))
    }

    /// Restores what [`Self::save`] wrote; every tensor must belong to one of the variables.
    pub fn load(&mut self, path: &Path) -> anyhow::Result<()> {
        let names = STATE_NAMES[usize::from(self.kind == OptimizerKind::Adamw)];
        let n_state = if self.kind == OptimizerKind::Adamw {
            2
        } else {
            1
        };
        let mut tensors: BTreeMap<String, Tensor> =
            crate::model::checkpoint::read_safetensors(path)
                .with_context(|| format!("reading the optimiser state {path:?}"))?
                .into_iter()
                .collect();
        for p in &mut self.params {
            p.state.clear();
            p.steps = 0;
            let Some(step) = tensors.remove(&format!("{}::step", p.name)) else {
                continue;
            };
            p.steps = step.double_value(&[0]) as u64;
            let wants_state = self.kind == OptimizerKind::Adamw || self.momentum != 0.0;
            if !wants_state {
                continue;
            }
            for n in &names[..n_state] {
                let key = format!("{}::{n}", p.name);
                let t = tensors
                    .remove(&key)
                    .with_context(|| format!("{path:?}: {key} is missing"))?;
                anyhow::ensure!(
                    t.size() == p.tensor.size(),
                    "{path:?}: {key} has shape {:?}, the variable {:?}",
                    t.size(),
                    p.tensor.size()
                );
                p.state.push(
                    t.to_kind(p.tensor.kind())
                        .to_device(p.tensor.device())
                        .contiguous(),
                );
            }
        }
        if let Some(key) = tensors.keys().next() {
            anyhow::bail!("{path:?}: {key} belongs to no trainable variable (wrong run?)");
        }
        Ok(())
    }
}

/// Dynamic loss scaling for float16 autocast (`torch.amp.GradScaler` defaults: start 2^16,
/// halve on an overflow and skip that step, double after 2000 clean steps).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// Current factor.
    pub scale: f64,
    /// Clean steps since the last change.
    pub clean_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: 65_536.0,
            clean_steps: 0,
        }
    }
}

impl LossScaler {
    /// Unscales the gradients; `true` when they are finite and the step may be taken. On an
    /// overflow the gradients are cleared and the scale halved.
    pub fn unscale_and_check(&mut self, opt: &mut Optimizer) -> bool {
        opt.scale_grads(1.0 / self.scale);
        if opt.grad_norm().is_finite() {
            self.clean_steps += 1;
            if self.clean_steps >= 2000 {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
            true
        } else {
            opt.zero_grad();
            self.scale = (self.scale * 0.5).max(1.0);
            self.clean_steps = 0;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(cfg: &TrainConfig) -> (nn::VarStore, Optimizer) {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _w = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0, 3.0]));
        let opt = Optimizer::new(&vs, cfg);
        (vs, opt)
    }

    fn grad_step(vs: &nn::VarStore, opt: &mut Optimizer, lr: f64) {
        let w = vs.variables()["w"].shallow_clone();
        opt.zero_grad();
        (&w * &w).sum(Kind::Float).backward();
        opt.step(lr);
    }

    #[test]
    fn sgd_matches_torch_formula() {
        let cfg = TrainConfig {
            momentum: 0.9,
            weight_decay: 0.1,
            ..TrainConfig::default()
        };
        let (vs, mut opt) = toy(&cfg);
        grad_step(&vs, &mut opt, 0.1);
        grad_step(&vs, &mut opt, 0.1);
        // w=1: g=2, d=2.1, buf=2.1, w=0.79; g=1.58, d=1.659, buf=0.9*2.1+1.659=3.549, w=0.4351
        let w = Vec::<f32>::try_from(vs.variables()["w"].detach()).unwrap();
        assert!((w[0] - 0.4351).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let cfg = TrainConfig {
            optimizer: OptimizerKind::Adamw,
            weight_decay: 0.0,
            ..TrainConfig::default()
        };
        let (vs, mut opt) = toy(&cfg);
        grad_step(&vs, &mut opt, 0.01);
        // m̂ / sqrt(v̂) = sign(g) at the first step.
        let w = Vec::<f32>::try_from(vs.variables()["w"].detach()).unwrap();
        assert!(
            (w[0] - 0.99).abs() < 1e-6 && (w[1] + 1.99).abs() < 1e-6,
            "{w:?}"
        );
    }

    #[test]
    fn saved_state_resumes_identically() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adamw] {
            let cfg = TrainConfig {
                optimizer: kind,
                ..TrainConfig::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let (vs, mut opt) = toy(&cfg);
            grad_step(&vs, &mut opt, 0.05);
            opt.save(&dir.path().join("o.safetensors")).unwrap();
            let (vs2, mut opt2) = toy(&cfg);
            tch::no_grad(|| {
                let mut w2 = vs2.variables()["w"].shallow_clone();
                w2.copy_(&vs.variables()["w"]);
            });
            opt2.load(&dir.path().join("o.safetensors")).unwrap();
            grad_step(&vs, &mut opt, 0.05);
            grad_step(&vs2, &mut opt2, 0.05);
            let a = Vec::<f32>::try_from(vs.variables()["w"].detach()).unwrap();
            let b = Vec::<f32>::try_from(vs2.variables()["w"].detach()).unwrap();
            assert_eq!(a, b, "{kind:?}");
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let (vs, mut opt) = toy(&TrainConfig::default());
        let w = vs.variables()["w"].shallow_clone();
        (&w * &w).sum(Kind::Float).backward();
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm - (4.0f64 + 16.0 + 36.0).sqrt()).abs() < 1e-5);
        assert!((opt.grad_norm() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn schedules() {
        let base = TrainConfig {
            lr: 0.1,
            warmup_iters: 10,
            warmup_factor: 0.0,
            epochs: 10,
            ..TrainConfig::default()
        };
        let s = Schedule {
            start: 0,
            total: 100,
            steps_per_epoch: 10,
            epoch_steps: Vec::new(),
        };
        assert_eq!(s.lr(&base, 0), 0.0);
        assert!((s.lr(&base, 5) - 0.05).abs() < 1e-12);
        assert!((s.lr(&base, 10) - 0.1).abs() < 1e-12);
        assert!(s.lr(&base, 99) < 0.001);
        let multi = TrainConfig {
            schedule: ScheduleKind::Multistep,
            lr_milestones: vec![3, 6],
            ..base.clone()
        };
        assert!((s.lr(&multi, 29) - 0.1).abs() < 1e-12);
        assert!((s.lr(&multi, 30) - 0.01).abs() < 1e-12);
        assert!((s.lr(&multi, 60) - 0.001).abs() < 1e-12);
        // Epochs of different lengths (the loader's plan): milestones at the epochs' starts.
        let uneven = Schedule {
            epoch_steps: vec![12, 9, 11, 8, 10, 10, 10, 10, 10, 10],
            ..s.clone()
        };
        assert!((uneven.lr(&multi, 31) - 0.1).abs() < 1e-12);
        assert!((uneven.lr(&multi, 32) - 0.01).abs() < 1e-12);
        // Default milestones: 10 epochs → epochs 7 and 9 (start at steps 70 and 90).
        let default_multi = TrainConfig {
            lr_milestones: Vec::new(),
            ..multi.clone()
        };
        assert!((uneven.lr(&default_multi, 69) - 0.1).abs() < 1e-12);
        assert!((uneven.lr(&default_multi, 70) - 0.01).abs() < 1e-12);
        let one = TrainConfig {
            schedule: ScheduleKind::OneCycle,
            ..base.clone()
        };
        assert!((s.lr(&one, 0) - 0.004).abs() < 1e-12);
        assert!((s.lr(&one, 25) - 0.1).abs() < 1e-12);
        assert!(s.lr(&one, 100) < 1e-6);
        // A continued schedule starts over at its own start.
        let later = Schedule {
            start: 100,
            ..s.clone()
        };
        assert_eq!(later.lr(&base, 105), s.lr(&base, 5));
    }

    #[test]
    fn scaler_skips_overflow_and_halves() {
        let (vs, mut opt) = toy(&TrainConfig::default());
        let mut scaler = LossScaler::default();
        let w = vs.variables()["w"].shallow_clone();
        (&w * f64::INFINITY).sum(Kind::Float).backward();
        assert!(!scaler.unscale_and_check(&mut opt));
        assert_eq!(scaler.scale, 32_768.0);
        (&w * &w).sum(Kind::Float).backward();
        opt.scale_grads(scaler.scale);
        assert!(scaler.unscale_and_check(&mut opt));
        assert!((opt.grad_norm() - 56f64.sqrt()).abs() < 1e-4);
    }
}
