//! VAPT's channel-wise (depth-wise) convolution on a channels-last grid `[B, H, W, C]`, forward
//! and backward.
//!
//! Written as Burn ops, the conv is a sum of K² shifted windows: each window a strided view that
//! Flex walks element by element, each product a full-size temporary, and a backward made of
//! slice-assigns into zeros. On Flex one pass per output row reads the K² input rows it needs;
//! with channels last, every tap is a multiply-add over `C` contiguous values.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// K]` (one kernel shared by all channels, or one per channel), stride 1, zero padding `padding`
/// on every side, no bias; returns `[B, H + 2p − K + 1, W + 2p − K + 1, C]`.
///
/// On Flex one pass per output row (forward) or input row (backward), vectorised over the
/// channels; elsewhere a sum of K² shifted windows. The caller checks that the kernel fits.
pub fn depthwise_conv<B: Backend>(x: Tensor<B, 4>, kernel: Tensor<B, 3>, padding: usize) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let (x, kernel) = match flex::depthwise(x, kernel, padding) {
        Ok(y) => return y,
        Err(back) => back,
    };
    shifted_windows_conv(x, kernel, padding)
}

/// [`depthwise_conv`] as Burn ops: a sum of K² shifted windows, each scaled by its tap.
fn shifted_windows_conv<B: Backend>(x: Tensor<B, 4>, kernel: Tensor<B, 3>, padding: usize) -> Tensor<B, 4> {
    let [b, h, w, c] = x.dims();
    let [kc, k, _] = kernel.dims();
    let p = padding;
    let x = if p > 0 {
        let device = x.device();
        let side = Tensor::zeros([b, h, p, c], &device);
        let wide = Tensor::cat(vec![side.clone(), x, side], 2);
        let top = Tensor::zeros([b, p, w + 2 * p, c], &device);
        Tensor::cat(vec![top.clone(), wide, top], 1)
    } else {
        x
    };
    let (ho, wo) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
    // [kc, K, K] → taps [K, K, kc], each broadcast over the channels.
    let taps = kernel.permute([1, 2, 0]);
    let mut acc: Option<Tensor<B, 4>> = None;
    for dy in 0..k {
        for dx in 0..k {
            let tap = taps
                .clone()
                .slice([dy..dy + 1, dx..dx + 1, 0..kc])
                .reshape([1, 1, 1, kc]);
            let term = x.clone().slice([0..b, dy..dy + ho, dx..dx + wo, 0..c]) * tap;
            acc = Some(match acc {
                Some(a) => a + term,
                None => term,
            });
        }
    }
    acc.unwrap_or_else(|| unreachable!("kernel side is validated to be >= 1"))
}

#[cfg(feature = "flex")]
mod flex {
    use std::sync::Arc;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops};
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;
    use rayon::prelude::*;

    use crate::dispatch::{apply2, dense, f32_slice, sum_partials, tensor, values};

    /// Sizes of one conv: input `[b, h, w, c]`, kernel `k × k` with `kc` (1 or `c`) channels, padding
    /// `p`, output `[b, ho, wo, c]`.
    #[derive(Clone, Copy, Debug)]
    struct Geometry {
        b: usize,
        h: usize,
        w: usize,
        c: usize,
        k: usize,
        kc: usize,
        p: usize,
        ho: usize,
        wo: usize,
    }

    impl Geometry {
        fn new(x: &FlexTensor, kernel: &FlexTensor, p: usize) -> Option<Self> {
            let (&[b, h, w, c], &[kc, k, k2]) =
                (x.layout().shape().as_slice(), kernel.layout().shape().as_slice())
            else {
                return None;
            };
            let ok = k == k2 && k > 0 && (kc == 1 || kc == c) && c > 0 && h + 2 * p >= k && w + 2 * p >= k;
            ok.then_some(Self {
                b,
                h,
                w,
                c,
                k,
                kc,
                p,
                ho: h + 2 * p + 1 - k,
                wo: w + 2 * p + 1 - k,
            })
        }

        /// Input row/column `o + d − p` for output index `o` and tap `d`, if inside the grid.
        fn input(o: usize, d: usize, p: usize, len: usize) -> Option<usize> {
            (o + d).checked_sub(p).filter(|&i| i < len)
        }

        /// Output row/column `i + p − d` that tap `d` reads input index `i` for, if any.
        fn output(i: usize, d: usize, p: usize, len: usize) -> Option<usize> {
            (i + p).checked_sub(d).filter(|&o| o < len)
        }
    }

    /// The kernel `[kc, K, K]` as taps `[K, K, C]` (a shared kernel repeated over the channels).
    fn taps(kernel: &[f32], g: &Geometry) -> Vec<f32> {
        let mut t = vec![0.0f32; g.k * g.k * g.c];
        for dy in 0..g.k {
            for dx in 0..g.k {
                let row = &mut t[(dy * g.k + dx) * g.c..][..g.c];
                for (ch, v) in row.iter_mut().enumerate() {
                    let kch = if g.kc == 1 { 0 } else { ch };
                    *v = kernel[(kch * g.k + dy) * g.k + dx];
                }
            }
        }
        t
    }

    /// `acc += a ⊙ b`.
    #[inline(always)]
    fn fma_row(acc: &mut [f32], a: &[f32], b: &[f32]) {
        for ((o, &x), &y) in acc.iter_mut().zip(a).zip(b) {
            *o += x * y;
        }
    }

    #[derive(Clone, Debug)]
    struct ConvState {
        x: FlexTensor,
        taps: Arc<Vec<f32>>,
        geometry: Geometry,
    }

    fn forward(x: &FlexTensor, kernel: &FlexTensor, padding: usize) -> Option<(FlexTensor, ConvState)> {
        let g = Geometry::new(x, kernel, padding)?;
        let (xs, ks) = (f32_slice(x)?, f32_slice(kernel)?);
        let taps = taps(ks, &g);
        let row = g.wo * g.c;
        let mut out = vec![0.0f32; g.b * g.ho * row];
        // One task per output row (b, oy); taps in (dy, dx) order, as the sum of shifted windows.
        out.par_chunks_mut(row).enumerate().for_each(|(r, o)| {
            let (bi, oy) = (r / g.ho, r % g.ho);
            for dy in 0..g.k {
                let Some(iy) = Geometry::input(oy, dy, g.p, g.h) else {
                    continue;
                };
                let in_row = &xs[(bi * g.h + iy) * g.w * g.c..][..g.w * g.c];
                for dx in 0..g.k {
                    let tap = &taps[(dy * g.k + dx) * g.c..][..g.c];
                    for (ox, o) in o.chunks_exact_mut(g.c).enumerate() {
                        if let Some(ix) = Geometry::input(ox, dx, g.p, g.w) {
                            fma_row(o, &in_row[ix * g.c..][..g.c], tap);
                        }
                    }
                }
            }
        });
        let y = tensor(out, [g.b, g.ho, g.wo, g.c]);
        let state = ConvState {
            x: x.clone(),
            taps: Arc::new(taps),
            geometry: g,
        };
        Some((y, state))
    }

    #[derive(Debug)]
    struct ConvOp;

    impl Backward<Flex, 2> for ConvOp {
        type State = ConvState;

        fn backward(self, ops: Ops<ConvState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let gt = dense(grads.consume::<Flex>(&ops.node));
            let [px, pk] = ops.parents;
            let st = &ops.state;
            let g = st.geometry;
            let (gs, xs) = (values(&gt), values(&st.x));
            let (in_row, out_row) = (g.w * g.c, g.wo * g.c);
            if let Some(node) = px {
                // dx[b, iy, ix] = Σ taps[dy, dx] ⊙ g[b, iy + p − dy, ix + p − dx]; one task per input row.
                let mut dx = vec![0.0f32; g.b * g.h * in_row];
                dx.par_chunks_mut(in_row).enumerate().for_each(|(r, d)| {
                    let (bi, iy) = (r / g.h, r % g.h);
                    for dy in 0..g.k {
                        let Some(oy) = Geometry::output(iy, dy, g.p, g.ho) else {
                            continue;
                        };
                        let g_row = &gs[(bi * g.ho + oy) * out_row..][..out_row];
                        for dxi in 0..g.k {
                            let tap = &st.taps[(dy * g.k + dxi) * g.c..][..g.c];
                            for (ix, d) in d.chunks_exact_mut(g.c).enumerate() {
                                if let Some(ox) = Geometry::output(ix, dxi, g.p, g.wo) {
                                    fma_row(d, &g_row[ox * g.c..][..g.c], tap);
                                }
                            }
                        }
                    }
                });
                grads.register::<Flex>(node.id, tensor(dx, [g.b, g.h, g.w, g.c]));
            }
            if let Some(node) = pk {
                // dtaps[dy, dx] = Σ g[b, oy, ox] ⊙ x[b, oy + dy − p, ox + dx − p]: partial sums per
                // output row, reduced.
                let kk = g.k * g.k * g.c;
                let partials = (0..g.b * g.ho)
                    .into_par_iter()
                    .map(|r| {
                        let mut acc = vec![0.0f32; kk];
                        let (bi, oy) = (r / g.ho, r % g.ho);
                        let g_row = &gs[r * out_row..][..out_row];
                        for dy in 0..g.k {
                            let Some(iy) = Geometry::input(oy, dy, g.p, g.h) else {
                                continue;
                            };
                            let x_row = &xs[(bi * g.h + iy) * in_row..][..in_row];
                            for dxi in 0..g.k {
                                let a = &mut acc[(dy * g.k + dxi) * g.c..][..g.c];
                                for ox in 0..g.wo {
                                    if let Some(ix) = Geometry::input(ox, dxi, g.p, g.w) {
                                        fma_row(a, &g_row[ox * g.c..][..g.c], &x_row[ix * g.c..][..g.c]);
                                    }
                                }
                            }
                        }
                        acc
                    })
                    .collect();
                let dtaps = sum_partials(partials, kk);
                // Back to the kernel layout [kc, K, K]; a shared kernel sums over the channels.
                let mut dk = vec![0.0f32; g.kc * g.k * g.k];
                for t in 0..g.k * g.k {
                    let per_channel = &dtaps[t * g.c..][..g.c];
                    if g.kc == 1 {
                        dk[t] = per_channel.iter().sum();
                    } else {
                        for (ch, &v) in per_channel.iter().enumerate() {
                            dk[ch * g.k * g.k + t] = v;
                        }
                    }
                }
                grads.register::<Flex>(node.id, tensor(dk, [g.kc, g.k, g.k]));
            }
        }
    }

    /// The depth-wise conv on Flex / Autodiff<Flex>; the inputs back on any other backend or shape.
    #[allow(clippy::type_complexity)]
    pub fn depthwise<B: Backend>(
        x: Tensor<B, 4>,
        kernel: Tensor<B, 3>,
        padding: usize,
    ) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 3>)> {
        apply2((x, kernel), |x, k| forward(x, k, padding), ConvOp)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use crate::test_util::{assert_same, grads, random, A};

    #[test]
    fn depthwise_conv_matches_shifted_windows_forward_and_both_gradients() {
        let dev = Default::default();
        // (grid 5×4, C 19: one SIMD chunk and a tail) × (shared / per-channel kernel) × padding.
        for (k, kc, p) in [(2usize, 1usize, 0usize), (3, 19, 1), (1, 1, 0), (3, 1, 2)] {
            let x = random([2, 5, 4, 19]);
            let kernel = Tensor::random([kc, k, k], Distribution::Normal(0.0, 1.0), &dev);
            let want = super::shifted_windows_conv(x.clone(), kernel.clone(), p);
            let got = super::depthwise_conv(x.clone(), kernel.clone(), p);
            assert_eq!(got.dims(), want.dims());
            got.into_data()
                .assert_approx_eq::<f32>(&want.clone().into_data(), Tolerance::absolute(1e-5));

            let g = random(want.dims());
            let k3 = Tensor::<A, 3>::from_inner(kernel.clone()).require_grad();
            let run = |fused: bool| {
                let k3 = k3.clone();
                move |t: Vec<Tensor<A, 4>>| {
                    if fused {
                        super::depthwise_conv(t[0].clone(), k3.clone(), p)
                    } else {
                        super::shifted_windows_conv(t[0].clone(), k3.clone(), p)
                    }
                }
            };
            let inputs = [x.clone()];
            assert_same(
                grads(&inputs, &[true], &g, run(true)),
                grads(&inputs, &[true], &g, run(false)),
                1e-4,
            );
            // The kernel gradient (the tap sums), through both paths.
            let kernel_grad = |fused: bool| {
                let ka = Tensor::<A, 3>::from_inner(kernel.clone()).require_grad();
                let xa = Tensor::<A, 4>::from_inner(x.clone());
                let y = if fused {
                    super::depthwise_conv(xa, ka.clone(), p)
                } else {
                    super::shifted_windows_conv(xa, ka.clone(), p)
                };
                let grads = (y * Tensor::from_inner(g.clone())).sum().backward();
                ka.grad(&grads).map(|t| t.into_data())
            };
            assert_same(vec![kernel_grad(true)], vec![kernel_grad(false)], 1e-4);
        }
    }
}
