//! `AnchorGenerator` (`torchvision/models/detection/anchor_utils.py`).

use tch::{Device, Kind, Tensor};

use crate::model::error::Result;

/// torchvision `AnchorGenerator`: per FPN level, anchors of `sizes[l] x aspect_ratios[l]` on a grid.
#[derive(Debug)]
pub struct AnchorGenerator {
    /// Cell anchors per level, `[A, 4]` f32 on the CPU, centred at 0 and rounded.
    cell_anchors: Vec<Tensor>,
}

impl AnchorGenerator {
    /// Builds the rounded cell anchors exactly like `generate_anchors` (anchor_utils.py:58-74).
    pub fn new(sizes: &[Vec<i64>], aspect_ratios: &[Vec<f64>]) -> Result<Self> {
        let mut cell_anchors = Vec::with_capacity(sizes.len());
        for (s, ar) in sizes.iter().zip(aspect_ratios) {
            let scales = Tensor::f_from_slice(s)?.f_to_kind(Kind::Float)?; // [S]
            let ar: Vec<f32> = ar.iter().map(|&a| a as f32).collect();
            let aspect = Tensor::f_from_slice(&ar)?; // [R]
            let h_ratios = aspect.f_sqrt()?;
            let w_ratios = h_ratios.f_reciprocal()?;
            let ws = w_ratios
                .f_unsqueeze(1)?
                .f_mul(&scales.f_unsqueeze(0)?)?
                .f_view([-1])?;
            let hs = h_ratios
                .f_unsqueeze(1)?
                .f_mul(&scales.f_unsqueeze(0)?)?
                .f_view([-1])?;
            let base = Tensor::f_stack(&[ws.f_neg()?, hs.f_neg()?, ws, hs], 1)? / 2.0;
            cell_anchors.push(base.f_round()?); // [R*S, 4], half-to-even like torch.round
        }
        Ok(Self { cell_anchors })
    }

    /// Number of anchors per location for every level.
    pub fn num_anchors_per_location(&self) -> Vec<i64> {
        self.cell_anchors.iter().map(|c| c.size()[0]).collect()
    }

    /// The rounded cell anchors `[A, 4]` of each level.
    pub fn cell_anchors(&self) -> &[Tensor] {
        &self.cell_anchors
    }

    /// Anchors of one image (identical for every image of a batch) per level, `[H_l*W_l*A, 4]`,
    /// ordered (y, x, a). `padded_size` is the batch tensor's `(H, W)`; strides are
    /// `padded // feature` per axis (integer division, anchor_utils.py:118-125).
    pub fn grid_anchors(
        &self,
        padded_size: (i64, i64),
        feature_sizes: &[(i64, i64)],
        device: Device,
    ) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(feature_sizes.len());
        for (&(gh, gw), base) in feature_sizes.iter().zip(&self.cell_anchors) {
            let (stride_h, stride_w) = (padded_size.0 / gh, padded_size.1 / gw);
            let shifts_x = Tensor::f_arange(gw, (Kind::Int64, device))? * stride_w;
            let shifts_y = Tensor::f_arange(gh, (Kind::Int64, device))? * stride_h;
            let grid = Tensor::f_meshgrid_indexing(&[shifts_y, shifts_x], "ij")?;
            let shift_y = grid[0].f_reshape([-1])?;
            let shift_x = grid[1].f_reshape([-1])?;
            let shifts = Tensor::f_stack(&[&shift_x, &shift_y, &shift_x, &shift_y], 1)?; // [H*W, 4] int64
            let base = base.f_to_device(device)?;
            let anchors = shifts
                .f_view([-1, 1, 4])?
                .f_add(&base.f_view([1, -1, 4])?)?
                .f_reshape([-1, 4])?; // int64 + f32 -> f32
            out.push(anchors);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_anchors_match_torchvision_table() {
        let g = AnchorGenerator::new(
            &[vec![32], vec![512]],
            &[vec![0.5, 1.0, 2.0], vec![0.5, 1.0, 2.0]],
        )
        .unwrap();
        let a = Vec::<f32>::try_from(&g.cell_anchors()[0].reshape([-1])).unwrap();
        assert_eq!(
            a,
            vec![
                -23., -11., 23., 11., -16., -16., 16., 16., -11., -23., 11., 23.
            ]
        );
        let a = Vec::<f32>::try_from(&g.cell_anchors()[1].reshape([-1])).unwrap();
        assert_eq!(
            a,
            vec![
                -362., -181., 362., 181., -256., -256., 256., 256., -181., -362., 181., 362.
            ]
        );
    }

    #[test]
    fn pool_level_stride_uses_integer_division() {
        let g = AnchorGenerator::new(&[vec![512]], &[vec![1.0]]).unwrap();
        let a = g
            .grid_anchors((800, 1088), &[(13, 17)], Device::Cpu)
            .unwrap();
        assert_eq!(a[0].size(), vec![13 * 17, 4]);
        // second row of the grid: y shift = 800 / 13 = 61, x stride = 1088 / 17 = 64
        let second_row = Vec::<f32>::try_from(&a[0].get(17)).unwrap();
        assert_eq!(second_row, vec![-256., 61. - 256., 256., 61. + 256.]);
        let second_col = Vec::<f32>::try_from(&a[0].get(1)).unwrap();
        assert_eq!(second_col, vec![64. - 256., -256., 64. + 256., 256.]);
    }
}
