//! Small building blocks with torchvision parameter names: `Conv2d`, `FrozenBatchNorm2d`,
//! and the `Conv2dNormActivation` pattern (`torchvision/ops/misc.py`).

use tch::{Tensor, nn};

use crate::model::error::Result;

/// How a layer's weight is initialised when no checkpoint is loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightInit {
    /// `nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")` (ResNet, MobileNetV2, mask head).
    KaimingNormalFanOut,
    /// `nn.init.kaiming_uniform_(w, a=1)` (FPN convs, `feature_pyramid_network.py:103`).
    KaimingUniformA1,
    /// `nn.init.normal_(w, std)` (RPN head: std 0.01).
    Normal(f64),
    /// PyTorch's default `Conv2d`/`Linear` init: `kaiming_uniform_(a=sqrt(5))` = U(±1/sqrt(fan_in)).
    PytorchDefault,
}

fn fan(dims: &[i64], fan_out: bool) -> f64 {
    let receptive: i64 = dims.iter().skip(2).product();
    (if fan_out { dims[0] } else { dims[1] } * receptive) as f64
}

/// Creates a variable `name` of shape `dims` under `p` with the given init; frozen variables are
/// registered as non-trainable (not in `VarStore::trainable_variables`, `requires_grad == false`),
/// like torchvision's `requires_grad_(False)` on frozen backbone stages.
pub fn weight(
    p: &nn::Path,
    name: &str,
    dims: &[i64],
    init: WeightInit,
    trainable: bool,
) -> Result<Tensor> {
    let init = match init {
        WeightInit::KaimingNormalFanOut => nn::Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan(dims, true)).sqrt(),
        },
        WeightInit::KaimingUniformA1 => {
            // gain = sqrt(2 / (1 + a^2)) = 1, bound = gain * sqrt(3 / fan_in)
            let bound = (3.0 / fan(dims, false)).sqrt();
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            }
        }
        WeightInit::Normal(stdev) => nn::Init::Randn { mean: 0.0, stdev },
        WeightInit::PytorchDefault => {
            let bound = 1.0 / fan(dims, false).sqrt();
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            }
        }
    };
    let t = nn::f_init(init, dims, p.device(), p.kind())?;
    Ok(p.add(name, t, trainable))
}

/// Bias of a conv/linear layer: zeros, or PyTorch's default U(±1/sqrt(fan_in)).
pub fn bias(
    p: &nn::Path,
    out: i64,
    fan_in: i64,
    default_init: bool,
    trainable: bool,
) -> Result<Tensor> {
    let init = if default_init {
        let bound = 1.0 / (fan_in as f64).sqrt();
        nn::Init::Uniform {
            lo: -bound,
            up: bound,
        }
    } else {
        nn::Init::Const(0.0)
    };
    let t = nn::f_init(init, &[out], p.device(), p.kind())?;
    Ok(p.add("bias", t, trainable))
}

/// `nn.Conv2d` with torchvision key names `weight` / `bias`.
#[derive(Debug)]
pub struct Conv2d {
    /// `[out, in / groups, k, k]`
    pub weight: Tensor,
    /// `[out]` when the conv has a bias.
    pub bias: Option<Tensor>,
    stride: i64,
    padding: i64,
    dilation: i64,
    groups: i64,
}

/// Geometry of a [`Conv2d`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvSpec {
    /// Input channels.
    pub c_in: i64,
    /// Output channels.
    pub c_out: i64,
    /// Square kernel size.
    pub kernel: i64,
    /// Stride.
    pub stride: i64,
    /// Zero padding.
    pub padding: i64,
    /// Groups (depthwise = `c_in`).
    pub groups: i64,
    /// Whether the conv has a bias.
    pub bias: bool,
}

impl ConvSpec {
    /// `k x k` conv, stride 1, "same" padding `(k - 1) / 2`, no groups, no bias.
    pub fn new(c_in: i64, c_out: i64, kernel: i64) -> Self {
        Self {
            c_in,
            c_out,
            kernel,
            stride: 1,
            padding: (kernel - 1) / 2,
            groups: 1,
            bias: false,
        }
    }
    /// With stride.
    pub fn stride(self, stride: i64) -> Self {
        Self { stride, ..self }
    }
    /// With padding.
    pub fn padding(self, padding: i64) -> Self {
        Self { padding, ..self }
    }
    /// With groups.
    pub fn groups(self, groups: i64) -> Self {
        Self { groups, ..self }
    }
    /// With a bias.
    pub fn with_bias(self) -> Self {
        Self { bias: true, ..self }
    }
}

impl Conv2d {
    /// Registers `weight` (and `bias`) under `p`.
    pub fn new(p: &nn::Path, spec: ConvSpec, init: WeightInit, trainable: bool) -> Result<Self> {
        let dims = [
            spec.c_out,
            spec.c_in / spec.groups,
            spec.kernel,
            spec.kernel,
        ];
        let weight = weight(p, "weight", &dims, init, trainable)?;
        let bias = if spec.bias {
            let fan_in = dims[1] * spec.kernel * spec.kernel;
            Some(bias(
                p,
                spec.c_out,
                fan_in,
                init == WeightInit::PytorchDefault,
                trainable,
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride: spec.stride,
            padding: spec.padding,
            dilation: 1,
            groups: spec.groups,
        })
    }

    /// `bn(conv(x))` as one convolution with `bn` folded in: weight `W * scale`, bias
    /// `b * scale + shift` (`[N, C_in, H, W] -> [N, C_out, H', W']`). Equal to the two steps up to
    /// float rounding, without the two full passes over the output that `bn` costs (and its
    /// backward); the weight keeps its gradient.
    pub fn forward_bn(&self, xs: &Tensor, bn: &FrozenBatchNorm2d) -> Result<Tensor> {
        let (scale, shift) = bn.scale_shift()?; // [C_out], [C_out]
        let weight = self.weight.f_mul(&scale.f_reshape([-1, 1, 1, 1])?)?;
        let bias = match &self.bias {
            Some(b) => b.f_mul(&scale)?.f_add(&shift)?,
            None => shift,
        };
        Ok(xs.f_conv2d(
            &weight,
            Some(&bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [self.dilation, self.dilation],
            self.groups,
        )?)
    }

    /// `[N, C_in, H, W] -> [N, C_out, H', W']`
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.f_conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [self.dilation, self.dilation],
            self.groups,
        )?)
    }
}

/// The same `[N, C, H, W]` values laid out channels-last (NHWC strides), the layout in which
/// libtorch's oneDNN convolutions run fastest forward on the CPU (measured here: MobileNetV2
/// depthwise and 3x3 FPN/RPN convolutions; their backward is slower, so training keeps NCHW).
pub fn to_channels_last(xs: &Tensor) -> Result<Tensor> {
    Ok(xs
        .f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])?)
}

/// torchvision `FrozenBatchNorm2d`: four buffers (`weight, bias, running_mean, running_var`), no
/// `num_batches_tracked`, no gradients. `eps` is 0.0 for the COCO_V1 Mask R-CNN weights.
#[derive(Debug)]
pub struct FrozenBatchNorm2d {
    /// `[C]`
    pub weight: Tensor,
    /// `[C]`
    pub bias: Tensor,
    /// `[C]`
    pub running_mean: Tensor,
    /// `[C]`
    pub running_var: Tensor,
    /// Added to the variance.
    pub eps: f64,
}

impl FrozenBatchNorm2d {
    /// Identity-initialised frozen BN under `p`.
    pub fn new(p: &nn::Path, c: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: p.f_ones_no_train("weight", &[c])?,
            bias: p.f_zeros_no_train("bias", &[c])?,
            running_mean: p.f_zeros_no_train("running_mean", &[c])?,
            running_var: p.f_ones_no_train("running_var", &[c])?,
            eps,
        })
    }

    /// `(scale, shift)`, both `[C]`: `scale = w * rsqrt(rv + eps)`, `shift = b - rm * scale`
    /// (`ops/misc.py:56-64`).
    pub fn scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let scale = self
            .weight
            .f_mul(&(&self.running_var + self.eps).f_rsqrt()?)?;
        let shift = self.bias.f_sub(&self.running_mean.f_mul(&scale)?)?;
        Ok((scale, shift))
    }

    /// `x * scale + shift` per channel (`ops/misc.py:56-64`).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (scale, shift) = self.scale_shift()?;
        Ok(xs
            .f_mul(&scale.f_reshape([1, -1, 1, 1])?)?
            .f_add(&shift.f_reshape([1, -1, 1, 1])?)?)
    }
}

/// Activation after a conv + frozen BN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `nn.ReLU`
    Relu,
    /// `nn.ReLU6` (= hardtanh(0, 6))
    Relu6,
    /// No activation.
    Identity,
}

impl Activation {
    /// Applies the activation in place: `xs` is a fresh convolution output, and neither the
    /// convolution's backward nor the activation's (which reads its result) needs the old values.
    pub fn forward(self, mut xs: Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => xs.f_relu_()?,
            Activation::Relu6 => xs.f_relu6_()?,
            Activation::Identity => xs,
        })
    }
}

/// `Conv2dNormActivation(norm_layer=FrozenBatchNorm2d)`: keys `{p}.0.weight`, `{p}.1.*`.
#[derive(Debug)]
pub struct ConvBnAct {
    /// `.0`
    pub conv: Conv2d,
    /// `.1`
    pub bn: FrozenBatchNorm2d,
    /// Activation (no parameters).
    pub act: Activation,
}

impl ConvBnAct {
    /// Conv (no bias) + frozen BN + activation under `p / 0`, `p / 1`.
    pub fn new(
        p: &nn::Path,
        spec: ConvSpec,
        act: Activation,
        eps: f64,
        trainable: bool,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(&(p / 0), spec, WeightInit::KaimingNormalFanOut, trainable)?,
            bn: FrozenBatchNorm2d::new(&(p / 1), spec.c_out, eps)?,
            act,
        })
    }

    /// `[N, C_in, H, W] -> [N, C_out, H', W']`
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.act.forward(self.conv.forward_bn(xs, &self.bn)?)
    }
}
