//! `FeaturePyramidNetwork` + `LastLevelMaxPool` (`torchvision/ops/feature_pyramid_network.py`).

use tch::{Tensor, nn};

use crate::model::error::Result;
use crate::model::layers::{Conv2d, ConvSpec, WeightInit};

/// torchvision `FeaturePyramidNetwork` without norm layers, with `LastLevelMaxPool`.
/// Keys: `inner_blocks.{i}.0.{weight,bias}`, `layer_blocks.{i}.0.{weight,bias}`.
#[derive(Debug)]
pub struct FeaturePyramidNetwork {
    inner_blocks: Vec<Conv2d>, // 1x1 lateral convs
    layer_blocks: Vec<Conv2d>, // 3x3 output convs
}

impl FeaturePyramidNetwork {
    /// `in_channels`: channels of the backbone maps (finest first); all outputs have `out_channels`.
    pub fn new(p: &nn::Path, in_channels: &[i64], out_channels: i64) -> Result<Self> {
        let init = WeightInit::KaimingUniformA1; // feature_pyramid_network.py:103, bias 0
        let mut inner_blocks = Vec::new();
        let mut layer_blocks = Vec::new();
        // `{name}.{i}.0`: a `c_in → out_channels` conv with a `k`×`k` kernel and a bias.
        let conv = |name: &str, i: usize, c_in: i64, k: i64| {
            let spec = ConvSpec::new(c_in, out_channels, k).with_bias();
            Conv2d::new(&(p / name / i / 0), spec, init, true)
        };
        for (i, &c) in in_channels.iter().enumerate() {
            inner_blocks.push(conv("inner_blocks", i, c, 1)?);
            layer_blocks.push(conv("layer_blocks", i, out_channels, 3)?);
        }
        Ok(Self {
            inner_blocks,
            layer_blocks,
        })
    }

    /// Backbone maps (finest first) -> FPN maps `'0'..` plus `'pool'` (= last map sub-sampled by 2).
    pub fn forward(&self, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        let n = xs.len();
        let mut last_inner = self.inner_blocks[n - 1].forward(&xs[n - 1])?;
        let mut results = vec![self.layer_blocks[n - 1].forward(&last_inner)?];
        for idx in (0..n - 1).rev() {
            let lateral = self.inner_blocks[idx].forward(&xs[idx])?;
            let size = lateral.size();
            let top_down = last_inner.f_upsample_nearest2d([size[2], size[3]], None, None)?;
            last_inner = lateral.f_add(&top_down)?;
            results.insert(0, self.layer_blocks[idx].forward(&last_inner)?);
        }
        // LastLevelMaxPool: max_pool2d(kernel 1, stride 2, padding 0)
        let pool = results[n - 1].f_max_pool2d([1, 1], [2, 2], [0, 0], [1, 1], false)?;
        results.push(pool);
        Ok(results)
    }
}
