//! Backbone bodies under the FPN (`torchvision/models/detection/backbone_utils.py`):
//! ResNet-50 (`torchvision/models/resnet.py`) and MobileNetV2 features (`torchvision/models/mobilenetv2.py`),
//! both with `FrozenBatchNorm2d`, wrapped like `IntermediateLayerGetter` (modules after the last
//! returned stage are not built and have no keys).

use tch::{Tensor, nn};

use crate::model::config::Backbone;
use crate::model::error::{ModelError, Result};
use crate::model::layers::{
    Activation, Conv2d, ConvBnAct, ConvSpec, FrozenBatchNorm2d, WeightInit, to_channels_last,
};

/// torchvision `Bottleneck` (expansion 4, stride on the 3x3 conv).
#[derive(Debug)]
struct Bottleneck {
    conv1: Conv2d,
    bn1: FrozenBatchNorm2d,
    conv2: Conv2d,
    bn2: FrozenBatchNorm2d,
    conv3: Conv2d,
    bn3: FrozenBatchNorm2d,
    downsample: Option<(Conv2d, FrozenBatchNorm2d)>,
}

impl Bottleneck {
    fn new(
        p: &nn::Path,
        inplanes: i64,
        planes: i64,
        stride: i64,
        eps: f64,
        trainable: bool,
    ) -> Result<Self> {
        let init = WeightInit::KaimingNormalFanOut;
        let downsample = if stride != 1 || inplanes != planes * 4 {
            let d = p / "downsample";
            Some((
                Conv2d::new(
                    &(&d / 0),
                    ConvSpec::new(inplanes, planes * 4, 1).stride(stride),
                    init,
                    trainable,
                )?,
                FrozenBatchNorm2d::new(&(&d / 1), planes * 4, eps)?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv2d::new(
                &(p / "conv1"),
                ConvSpec::new(inplanes, planes, 1),
                init,
                trainable,
            )?,
            bn1: FrozenBatchNorm2d::new(&(p / "bn1"), planes, eps)?,
            conv2: Conv2d::new(
                &(p / "conv2"),
                ConvSpec::new(planes, planes, 3).stride(stride),
                init,
                trainable,
            )?,
            bn2: FrozenBatchNorm2d::new(&(p / "bn2"), planes, eps)?,
            conv3: Conv2d::new(
                &(p / "conv3"),
                ConvSpec::new(planes, planes * 4, 1),
                init,
                trainable,
            )?,
            bn3: FrozenBatchNorm2d::new(&(p / "bn3"), planes * 4, eps)?,
            downsample,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let out = self.conv1.forward_bn(xs, &self.bn1)?.f_relu_()?;
        let out = self.conv2.forward_bn(&out, &self.bn2)?.f_relu_()?;
        let out = self.conv3.forward_bn(&out, &self.bn3)?;
        let identity = match &self.downsample {
            Some((conv, bn)) => conv.forward_bn(xs, bn)?,
            None => xs.shallow_clone(),
        };
        Ok(out.f_add(&identity)?.f_relu_()?)
    }
}

/// ResNet-50 body: `conv1, bn1, relu, maxpool, layer1..layer4` (keys `conv1.weight`, `layer1.0.conv1.weight`, …).
#[derive(Debug)]
struct Resnet50Body {
    conv1: Conv2d,
    bn1: FrozenBatchNorm2d,
    layers: Vec<Vec<Bottleneck>>, // layer1..layer{max returned}
}

impl Resnet50Body {
    /// `trainable_layers` in 0..=5: the top stages of `[layer4, layer3, layer2, layer1, conv1]`
    /// keep gradients (`_resnet_fpn_extractor`, backbone_utils.py:101-109).
    fn new(p: &nn::Path, num_layers: usize, trainable_layers: i64, eps: f64) -> Result<Self> {
        let trainable = |stage: i64| stage > 4 - trainable_layers; // conv1 = 0, layer1 = 1, …
        let conv1 = Conv2d::new(
            &(p / "conv1"),
            ConvSpec::new(3, 64, 7).stride(2).padding(3),
            WeightInit::KaimingNormalFanOut,
            trainable(0),
        )?;
        let bn1 = FrozenBatchNorm2d::new(&(p / "bn1"), 64, eps)?;
        // resnet.py: planes (64, 128, 256, 512), blocks (3, 4, 6, 3) for resnet50
        let spec = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)];
        let mut inplanes = 64;
        let mut layers = Vec::new();
        for (li, &(planes, blocks, stride)) in spec.iter().take(num_layers).enumerate() {
            let lp = p / format!("layer{}", li + 1);
            let mut layer = Vec::new();
            for b in 0..blocks {
                let s = if b == 0 { stride } else { 1 };
                layer.push(Bottleneck::new(
                    &(&lp / b),
                    inplanes,
                    planes,
                    s,
                    eps,
                    trainable(li as i64 + 1),
                )?);
                inplanes = planes * 4;
            }
            layers.push(layer);
        }
        Ok(Self { conv1, bn1, layers })
    }

    /// `[N, 3, H, W]` -> outputs of layer1..layerK (`[N, 256, H/4, W/4]`, `[N, 512, /8]`, `[N, 1024, /16]`, `[N, 2048, /32]`).
    fn forward(&self, xs: &Tensor) -> Result<Vec<Tensor>> {
        let x = self.conv1.forward_bn(xs, &self.bn1)?.f_relu_()?; // [N, 64, H/2, W/2]
        let mut x = x.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?; // [N, 64, H/4, W/4]
        let mut outs = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            for block in layer {
                x = block.forward(&x)?;
            }
            outs.push(x.shallow_clone());
        }
        Ok(outs)
    }
}

/// torchvision MobileNetV2 `InvertedResidual` (keys `conv.{0,1,2,3}`).
#[derive(Debug)]
struct InvertedResidual {
    convs: Vec<ConvBnAct>, // [expand 1x1], depthwise 3x3
    project: Conv2d,
    project_bn: FrozenBatchNorm2d,
    use_res_connect: bool,
}

impl InvertedResidual {
    fn new(
        p: &nn::Path,
        inp: i64,
        oup: i64,
        stride: i64,
        expand_ratio: i64,
        eps: f64,
        trainable: bool,
    ) -> Result<Self> {
        let c = p / "conv";
        let hidden = inp * expand_ratio; // int(round(inp * expand_ratio)) with integer ratios
        let mut convs = Vec::new();
        if expand_ratio != 1 {
            convs.push(ConvBnAct::new(
                &(&c / 0),
                ConvSpec::new(inp, hidden, 1),
                Activation::Relu6,
                eps,
                trainable,
            )?);
        }
        let dw = ConvSpec::new(hidden, hidden, 3)
            .stride(stride)
            .groups(hidden);
        convs.push(ConvBnAct::new(
            &(&c / convs.len()),
            dw,
            Activation::Relu6,
            eps,
            trainable,
        )?);
        let i = convs.len() as i64;
        let project = Conv2d::new(
            &(&c / i),
            ConvSpec::new(hidden, oup, 1),
            WeightInit::KaimingNormalFanOut,
            trainable,
        )?;
        let project_bn = FrozenBatchNorm2d::new(&(&c / (i + 1)), oup, eps)?;
        Ok(Self {
            convs,
            project,
            project_bn,
            use_res_connect: stride == 1 && inp == oup,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut x = xs.shallow_clone();
        for conv in &self.convs {
            x = conv.forward(&x)?;
        }
        let x = self.project.forward_bn(&x, &self.project_bn)?;
        Ok(if self.use_res_connect {
            xs.f_add(&x)?
        } else {
            x
        })
    }
}

#[derive(Debug)]
enum MobileBlock {
    Conv(ConvBnAct),
    Residual(InvertedResidual),
}

/// Indices of the MobileNetV2 `features` modules that start a stage: stem, the stride-2 blocks
/// (`_is_cn`), and the last conv (`_mobilenet_extractor`, backbone_utils.py:209).
pub const MOBILENET_V2_STAGE_INDICES: [usize; 6] = [0, 2, 4, 7, 14, 18];

/// MobileNetV2 `features` (width 1.0), keys `{i}.…` for `i` up to the last returned stage.
#[derive(Debug)]
struct MobilenetV2Body {
    blocks: Vec<MobileBlock>,
    returned: Vec<usize>, // feature indices whose outputs are returned
    /// Blocks before this one are built without gradients (`trainable_layers`).
    freeze_before: usize,
}

impl MobilenetV2Body {
    fn new(p: &nn::Path, returned_layers: &[i64], trainable_layers: i64, eps: f64) -> Result<Self> {
        let returned: Vec<usize> = returned_layers
            .iter()
            .map(|&l| MOBILENET_V2_STAGE_INDICES[l as usize])
            .collect();
        let last = *returned
            .iter()
            .max()
            .ok_or_else(|| ModelError::InvalidConfig("returned_layers is empty".to_owned()))?;
        let num_stages = MOBILENET_V2_STAGE_INDICES.len();
        // backbone_utils.py:214: modules before `freeze_before` get requires_grad False.
        let freeze_before = if trainable_layers == 0 {
            19
        } else {
            MOBILENET_V2_STAGE_INDICES[num_stages - trainable_layers as usize]
        };
        // mobilenetv2.py: inverted_residual_setting (t, c, n, s)
        let setting = [
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ];
        let mut blocks = Vec::new();
        let stem = ConvSpec::new(3, 32, 3).stride(2);
        blocks.push(MobileBlock::Conv(ConvBnAct::new(
            &(p / 0),
            stem,
            Activation::Relu6,
            eps,
            freeze_before == 0,
        )?));
        let mut input_channel = 32;
        'outer: for &(t, c, n, s) in &setting {
            for i in 0..n {
                let idx = blocks.len();
                if idx > last {
                    break 'outer;
                }
                let stride = if i == 0 { s } else { 1 };
                let trainable = idx >= freeze_before;
                let block =
                    InvertedResidual::new(&(p / idx), input_channel, c, stride, t, eps, trainable)?;
                blocks.push(MobileBlock::Residual(block));
                input_channel = c;
            }
        }
        if last == 18 {
            let spec = ConvSpec::new(320, 1280, 1);
            blocks.push(MobileBlock::Conv(ConvBnAct::new(
                &(p / 18),
                spec,
                Activation::Relu6,
                eps,
                18 >= freeze_before,
            )?));
        }
        blocks.truncate(last + 1);
        Ok(Self {
            blocks,
            returned,
            freeze_before,
        })
    }

    /// `channels_last`: whole body channels-last (inference). Otherwise the frozen blocks
    /// (no backward through them) run channels-last and their outputs go on NCHW, the layout
    /// the trainable blocks' backward is fastest in.
    fn forward(&self, xs: &Tensor, channels_last: bool) -> Result<Vec<Tensor>> {
        let frozen_prefix = !channels_last && self.freeze_before > 0;
        let mut x = if frozen_prefix {
            to_channels_last(xs)?
        } else {
            xs.shallow_clone()
        };
        let mut outs = Vec::with_capacity(self.returned.len());
        for (i, block) in self.blocks.iter().enumerate() {
            if frozen_prefix && i == self.freeze_before {
                x = x.f_contiguous()?;
            }
            x = match block {
                MobileBlock::Conv(c) => c.forward(&x)?,
                MobileBlock::Residual(r) => r.forward(&x)?,
            };
            if self.returned.contains(&i) {
                outs.push(if frozen_prefix && i < self.freeze_before {
                    x.f_contiguous()?
                } else {
                    x.shallow_clone()
                });
            }
        }
        Ok(outs)
    }
}

/// Output channels of MobileNetV2 `features[i]` for the stage starts.
fn mobilenet_v2_channels(feature_index: usize) -> i64 {
    match feature_index {
        0 => 32,
        2 => 24,
        4 => 32,
        7 => 64,
        14 => 160,
        _ => 1280,
    }
}

/// The backbone body (`backbone.body`): returns one feature map per returned stage.
#[derive(Debug)]
pub struct BackboneBody {
    inner: BodyKind,
    /// Channels of each returned feature map (FPN `in_channels_list`).
    pub out_channels: Vec<i64>,
}

#[derive(Debug)]
enum BodyKind {
    Resnet(Resnet50Body, Vec<usize>),
    Mobilenet(MobilenetV2Body),
}

impl BackboneBody {
    /// Builds the body under `p` (= `backbone.body`).
    pub fn new(
        p: &nn::Path,
        backbone: Backbone,
        returned_layers: &[i64],
        trainable_layers: i64,
        eps: f64,
    ) -> Result<Self> {
        match backbone {
            Backbone::Resnet50 => {
                let num_layers = *returned_layers.iter().max().unwrap_or(&4) as usize;
                let body = Resnet50Body::new(p, num_layers, trainable_layers, eps)?;
                // in_channels_stage2 * 2 ** (i - 1) with in_channels_stage2 = 256 (backbone_utils.py:145)
                let out_channels = returned_layers.iter().map(|&l| 256 << (l - 1)).collect();
                let taps = returned_layers.iter().map(|&l| l as usize - 1).collect();
                Ok(Self {
                    inner: BodyKind::Resnet(body, taps),
                    out_channels,
                })
            }
            Backbone::MobilenetV2 => {
                let body = MobilenetV2Body::new(p, returned_layers, trainable_layers, eps)?;
                let out_channels = returned_layers
                    .iter()
                    .map(|&l| mobilenet_v2_channels(MOBILENET_V2_STAGE_INDICES[l as usize]))
                    .collect();
                Ok(Self {
                    inner: BodyKind::Mobilenet(body),
                    out_channels,
                })
            }
        }
    }

    /// `[N, 3, H, W]` normalised batch -> returned feature maps (finest first). `inference`:
    /// no backward will run (the caller passes a channels-last batch); otherwise MobileNetV2's
    /// frozen blocks run channels-last (forward only) and the rest NCHW.
    pub fn forward(&self, xs: &Tensor, inference: bool) -> Result<Vec<Tensor>> {
        match &self.inner {
            BodyKind::Resnet(body, taps) => {
                let all = body.forward(xs)?;
                Ok(taps.iter().map(|&i| all[i].shallow_clone()).collect())
            }
            BodyKind::Mobilenet(body) => body.forward(xs, inference),
        }
    }
}
