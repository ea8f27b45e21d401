//! Our optimisers, gradient clipping and learning-rate schedules against `torch.optim`,
//! `torch.nn.utils.clip_grad_norm_` and `torch.optim.lr_scheduler` (the venv's torch 2.13),
//! step by step: the same initial parameters and gradients must give the same learning rate at
//! every step and the same parameters after it. With the loss and gradient goldens of
//! tests/model_golden.rs this makes a training step here the same step as torchvision's.

use std::path::Path;
use std::process::Command;

use maskstudio::train::config::{OptimizerKind, ScheduleKind, TrainConfig};
use maskstudio::train::optim::{Optimizer, Schedule};
use tch::{Device, Kind, Tensor, nn};

/// Steps per run, steps per epoch and warm-up steps (warm-up inside epoch 0, as torchvision's
/// reference recipe does it).
const STEPS: usize = 36;
const EPOCH: usize = 6;
const WARMUP: usize = 4;

/// Variables of different shapes, so per-variable state and the global clipping norm matter.
const SHAPES: [(&str, &[i64]); 3] = [("weight", &[4, 3]), ("bias", &[5]), ("b", &[2, 2, 3])];

/// Replays the recipe with torch: per-step learning rates, clipping, optimiser. Prints one JSON
/// line `{"lr": [...]}` and writes the parameters after the last step to argv[3].
const PY: &str = r#"
import json, sys, torch
from safetensors.torch import load_file, save_file
spec = json.loads(sys.argv[1]); t = load_file(sys.argv[2])
names = spec["names"]
params = [torch.nn.Parameter(t["init." + n].clone()) for n in names]
if spec["optimizer"] == "sgd":
    opt = torch.optim.SGD(params, lr=spec["lr"], momentum=spec["momentum"], weight_decay=spec["wd"])
else:
    opt = torch.optim.AdamW(params, lr=spec["lr"], betas=tuple(spec["betas"]), eps=1e-8,
                            weight_decay=spec["wd"])
S, W, E = spec["steps"], spec["warmup"], spec["epoch"]
sched = torch.optim.lr_scheduler
warm = sched.LinearLR(opt, start_factor=spec["warmup_factor"], total_iters=W)
if spec["schedule"] == "cosine":
    cos = sched.CosineAnnealingLR(opt, T_max=S - W, eta_min=0.0)
    per_step, per_epoch = sched.SequentialLR(opt, [warm, cos], milestones=[W]), None
else:
    per_step = warm
    per_epoch = sched.MultiStepLR(opt, milestones=spec["milestones"], gamma=spec["gamma"])
lrs = []
for i in range(S):
    lrs.append(opt.param_groups[0]["lr"])
    opt.zero_grad()
    for n, p in zip(names, params):
        p.grad = t["grad.%d.%s" % (i, n)].clone()
    torch.nn.utils.clip_grad_norm_(params, spec["clip"])
    opt.step()
    per_step.step()
    if per_epoch is not None and (i + 1) % E == 0:
        per_epoch.step()
save_file({n: p.detach().contiguous() for n, p in zip(names, params)}, sys.argv[3])
print(json.dumps({"lr": lrs}))
"#;

/// A deterministic tensor of `shape` (values in about [-1.5, 1.5]) from `salt`.
fn pattern(shape: &[i64], salt: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let scale = 1.0 + salt.cos() * 0.5;
    ((Tensor::arange(n, (Kind::Double, Device::Cpu)) * 0.731 + salt).sin() * scale)
        .to_kind(Kind::Float)
        .reshape(shape)
}

/// Runs `cfg` here and in torch; asserts equal learning rates and parameters.
fn check(tag: &str, cfg: &TrainConfig, clip: f64, dir: &Path) {
    // Inputs: initial values and one gradient per step and variable (`grad.<step>.<name>`).
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (k, (name, shape)) in SHAPES.iter().enumerate() {
        tensors.push((format!("init.{name}"), pattern(shape, k as f64 * 2.1)));
        for i in 0..STEPS {
            // Later gradients are larger, so clipping starts to bite part-way through.
            let g = pattern(shape, 0.37 * i as f64 + k as f64) * (0.2 + 0.08 * i as f64);
            tensors.push((format!("grad.{i}.{name}"), g));
        }
    }
    let inputs = dir.join(format!("{tag}-in.safetensors"));
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, &inputs).unwrap();
    let get = |n: &str| &tensors.iter().find(|(k, _)| k == n).unwrap().1;

    // Ours.
    let vs = nn::VarStore::new(Device::Cpu);
    let vars: Vec<Tensor> = SHAPES
        .iter()
        .map(|(name, _)| vs.root().var_copy(name, get(&format!("init.{name}"))))
        .collect();
    let mut opt = Optimizer::new(&vs, cfg);
    let schedule = Schedule {
        start: 0,
        total: STEPS,
        steps_per_epoch: EPOCH,
        epoch_steps: Vec::new(),
    };
    let mut ours_lr = Vec::new();
    let mut clipped = 0;
    for i in 0..STEPS {
        let lr = schedule.lr(cfg, i);
        ours_lr.push(lr);
        opt.zero_grad();
        // loss = Σ p·g, so each variable's gradient is exactly g.
        let loss = SHAPES
            .iter()
            .zip(&vars)
            .map(|((name, _), v)| (v * get(&format!("grad.{i}.{name}"))).sum(Kind::Float))
            .reduce(|a, b| a + b)
            .unwrap();
        loss.backward();
        if opt.clip_grad_norm(clip) > clip {
            clipped += 1;
        }
        opt.step(lr);
    }
    assert!(
        clipped > 3 && clipped < STEPS - 3,
        "{tag}: the gradients should be clipped on some steps only ({clipped} of {STEPS})"
    );

    // torch.
    let out = dir.join(format!("{tag}-out.safetensors"));
    let spec = serde_json::json!({
        "names": SHAPES.iter().map(|s| s.0).collect::<Vec<_>>(),
        "optimizer": if cfg.optimizer == OptimizerKind::Sgd { "sgd" } else { "adamw" },
        "schedule": if cfg.schedule == ScheduleKind::Cosine { "cosine" } else { "multistep" },
        "lr": cfg.lr, "momentum": cfg.momentum, "wd": cfg.weight_decay, "betas": cfg.adam_betas,
        "steps": STEPS, "warmup": WARMUP, "epoch": EPOCH, "warmup_factor": cfg.warmup_factor,
        "milestones": cfg.lr_milestones, "gamma": cfg.lr_gamma, "clip": clip,
    });
    let output = Command::new(maskstudio::host::python())
        .arg("-c")
        .arg(PY)
        .arg(spec.to_string())
        .arg(&inputs)
        .arg(&out)
        .output()
        .expect("python from the torch venv (./test-all installs it)");
    assert!(
        output.status.success(),
        "{tag}: python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reply: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let torch_lr: Vec<f64> = serde_json::from_value(reply["lr"].clone()).unwrap();

    assert_eq!(torch_lr.len(), STEPS);
    for (i, (a, b)) in ours_lr.iter().zip(&torch_lr).enumerate() {
        assert!(
            (a - b).abs() <= 1e-9 * cfg.lr,
            "{tag} step {i}: lr ours {a} torch {b}\nours {ours_lr:?}\ntorch {torch_lr:?}"
        );
    }
    let theirs = Tensor::read_safetensors(&out).unwrap();
    for ((name, _), v) in SHAPES.iter().zip(&vars) {
        let want = &theirs.iter().find(|(k, _)| k == name).unwrap().1;
        let moved = (v - get(&format!("init.{name}")))
            .abs()
            .max()
            .double_value(&[]);
        let diff = (v - want).abs().max().double_value(&[]);
        println!("{tag} {name}: moved {moved:.3e}, max|ours - torch| {diff:.2e}");
        assert!(moved > 1e-3, "{tag} {name}: the parameters should move");
        assert!(
            diff <= 2e-6 * (1.0 + moved),
            "{tag} {name}: ours and torch differ by {diff}"
        );
    }
}

fn recipe(optimizer: OptimizerKind, schedule: ScheduleKind) -> TrainConfig {
    TrainConfig {
        optimizer,
        schedule,
        lr: if optimizer == OptimizerKind::Sgd {
            0.02
        } else {
            1e-3
        },
        momentum: 0.9,
        weight_decay: if optimizer == OptimizerKind::Sgd {
            1e-4
        } else {
            0.05
        },
        warmup_iters: WARMUP,
        warmup_factor: 0.001,
        lr_milestones: vec![2, 4],
        lr_gamma: 0.1,
        ..TrainConfig::default()
    }
}

#[test]
fn sgd_with_warmup_cosine_and_clipping_matches_torch() {
    let dir = tempfile::tempdir().unwrap();
    check(
        "sgd-cosine",
        &recipe(OptimizerKind::Sgd, ScheduleKind::Cosine),
        4.0,
        dir.path(),
    );
}

#[test]
fn sgd_with_torchvisions_multistep_recipe_matches_torch() {
    let dir = tempfile::tempdir().unwrap();
    check(
        "sgd-multistep",
        &recipe(OptimizerKind::Sgd, ScheduleKind::Multistep),
        4.0,
        dir.path(),
    );
}

#[test]
fn adamw_with_warmup_cosine_and_clipping_matches_torch() {
    let dir = tempfile::tempdir().unwrap();
    check(
        "adamw-cosine",
        &recipe(OptimizerKind::Adamw, ScheduleKind::Cosine),
        4.0,
        dir.path(),
    );
}
