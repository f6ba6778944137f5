//! The backend-generic Vision Transformer.
//!
//! Token layout: `[CLS, patch_0 .. patch_{N-1}]` after [`Vit::embed`], patches row-major
//! (n = r·g + q, r the patch row). Blocks are pre-LN:
//! `h += Out(Attn(LN1(h)))`, `h += MLP(LN2(h))`, with separate q/k/v projections, heads laid out
//! head-major inside the width (index h·head_dim + j), exact erf GELU, LayerNorm eps from the config.
//!
//! The API is built for prompt methods: [`Vit::embed`] gives the token sequence, the caller runs
//! [`Vit::blocks`] one at a time on a sequence it controls (inserting or replacing prompt tokens in
//! between), optionally asking a block for its attention probabilities, and finishes with
//! [`Vit::forward_head`] (final norm → CLS → head).

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::config::VitConfig;

/// Exact (erf) GELU whose gradient is exact on every backend.
///
/// Burn 0.21's default `gelu_backward`, which the CubeCL backends (WGPU, CUDA) inherit,
/// differentiates the *tanh approximation* (measured: 3e-4 relative error against the exact
/// derivative), while Flex and LibTorch override it with the exact one. On other autodiff backends
/// GELU is therefore composed as `x · ½(1 + erf(x/√2))`, whose backward goes through `erf`'s exact
/// derivative; everywhere else the fused kernel is used. On Flex (CPU) it is vapt's own fused,
/// vectorised kernel ([`crate::kernels::gelu`]).
pub fn gelu_exact<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if crate::kernels::fused_on::<B>() {
        return crate::kernels::gelu(x);
    }
    let device = x.device();
    if !B::ad_enabled(&device) || fused_gelu_backward_is_exact(&B::name(&device)) {
        return gelu(x);
    }
    let cdf = x
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    x * cdf
}

/// A linear layer on `[B, T, D]` tokens as one `[B·T, D]` matrix product.
///
/// Burn's `Linear` on a rank-3 input broadcasts the weight into a batched product: B small matrix
/// products instead of one large one and, when the weight trains, B weight gradients that are then
/// summed. Flattening first gives one product and one weight gradient; same numbers.
pub fn linear_tokens<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let y = crate::kernels::linear(
        x.reshape([b * t, d]),
        layer.weight.val(),
        layer.bias.as_ref().map(|b| b.val()),
    );
    let out = y.dims()[1];
    y.reshape([b, t, out])
}

/// `norm(x)`, through vapt's fused kernel on Flex ([`crate::kernels::layer_norm`]); `eps` must be
/// the one `norm` was built with.
pub fn layer_norm<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    eps: f64,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match &norm.beta {
        Some(beta) if crate::kernels::fused_on::<B>() => {
            crate::kernels::layer_norm(x, norm.gamma.val(), beta.val(), eps)
        }
        _ => norm.forward(x),
    }
}

/// Backends (by `Backend::name`) whose fused `gelu_backward` is the exact derivative.
fn fused_gelu_backward_is_exact(name: &str) -> bool {
    let inner = name.strip_prefix("autodiff<").unwrap_or(name);
    inner.starts_with("flex") || inner.starts_with("tch")
}

/// Patch embedding: a p×p, stride-p convolution written as unfold + matmul.
///
/// `weight` is `[C·p·p, D]` with the input index `c·p² + ky·p + kx` (the flattened OIHW conv
/// kernel, transposed), `bias` is `[D]`.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// `[C·p·p, D]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[D]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Patch side in pixels.
    pub patch_size: usize,
}

impl<B: Backend> PatchEmbed<B> {
    /// `[B, C, H, W]` → `[B, N, D]`, patches row-major.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = images
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * gh * gw, c * p * p]);
        let d = self.bias.dims()[0];
        let out = patches.matmul(self.weight.val()) + self.bias.val().unsqueeze::<2>();
        out.reshape([b, gh * gw, d])
    }
}

/// Multi-head self-attention with separate q/k/v/out projections (weights `[in, out]`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection.
    pub query: Linear<B>,
    /// Key projection.
    pub key: Linear<B>,
    /// Value projection.
    pub value: Linear<B>,
    /// Output projection (input index h·head_dim + j).
    pub out: Linear<B>,
    /// Dropout on the attention probabilities.
    pub attn_drop: Dropout,
    /// Dropout after the output projection.
    pub proj_drop: Dropout,
    /// Number of heads.
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    /// `[B, T, D]` → `[B, T, D]`; with `keep_probs`, also the softmax probabilities `[B, H, T, T]`
    /// (before attention dropout).
    pub fn forward(&self, x: Tensor<B, 3>, keep_probs: bool) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        self.attend(x.clone(), x, keep_probs)
    }

    /// Attention of the tokens `queries` `[B, Tq, D]` over the sequence `x` `[B, T, D]` (keys and
    /// values): `[B, Tq, D]`. With `queries` a subset of `x`'s rows it equals those rows of
    /// [`Self::forward`].
    pub fn forward_queries(&self, queries: Tensor<B, 3>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.attend(queries, x, false).0
    }

    fn attend(
        &self,
        queries: Tensor<B, 3>,
        x: Tensor<B, 3>,
        keep_probs: bool,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let h = self.heads;
        let hd = x.dims()[2] / h;
        let scale = 1.0 / (hd as f32).sqrt();
        let q = linear_tokens(&self.query, queries);
        let k = linear_tokens(&self.key, x.clone());
        let v = linear_tokens(&self.value, x);
        let dropout_active = self.attn_drop.prob != 0.0 && B::ad_enabled(&q.device());
        let (ctx, kept) = if keep_probs || dropout_active {
            // softmax(q·kᵀ / √hd) as its own tensor, to keep and/or drop out.
            let probs = crate::kernels::attention_probs(q, k, h, scale);
            let kept = keep_probs.then(|| probs.clone());
            let probs = crate::kernels::dropout(probs, self.attn_drop.prob);
            (crate::kernels::attention_context(probs, v), kept)
        } else {
            // The same maths as one fused op (the probabilities are neither kept nor dropped).
            (crate::kernels::attention(q, k, v, h, scale), None)
        };
        (
            crate::kernels::dropout(linear_tokens(&self.out, ctx), self.proj_drop.prob),
            kept,
        )
    }
}

/// The block MLP: Linear → exact GELU → dropout → Linear → dropout.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `D → mlp_dim`.
    pub fc1: Linear<B>,
    /// `mlp_dim → D`.
    pub fc2: Linear<B>,
    /// Dropout after the activation and after `fc2`.
    pub drop: Dropout,
}

impl<B: Backend> Mlp<B> {
    /// `[.., D]` → `[.., D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let p = self.drop.prob;
        let x = crate::kernels::dropout(gelu_exact(linear_tokens(&self.fc1, x)), p);
        crate::kernels::dropout(linear_tokens(&self.fc2, x), p)
    }
}

/// One pre-LN transformer block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// LayerNorm before attention (`LayerNorm_0` in Google checkpoints).
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// LayerNorm before the MLP (`LayerNorm_2`).
    pub norm2: LayerNorm<B>,
    /// The MLP (`MlpBlock_3`).
    pub mlp: Mlp<B>,
    /// Epsilon of both LayerNorms (Burn's `LayerNorm` keeps its own private).
    pub norm_eps: f64,
}

impl<B: Backend> Block<B> {
    /// Runs the block on `[B, T, D]` tokens.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_impl(x, false).0
    }

    /// Runs the block and also returns its attention probabilities `[B, H, T, T]`.
    pub fn forward_with_attention(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let (x, probs) = self.forward_impl(x, true);
        let probs = probs.unwrap_or_else(|| unreachable!("attention asked to keep its probabilities"));
        (x, probs)
    }

    /// The block's output at the first token (CLS) only, `[B, 1, D]`: the same values as the first
    /// row of [`Self::forward`], without computing the other rows' queries, output projection and
    /// MLP. What a last block needs when only CLS goes on to the head.
    pub fn forward_cls(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let y = layer_norm(&self.norm1, self.norm_eps, x.clone());
        let cls = |t: Tensor<B, 3>| crate::kernels::narrow_tokens(t, 0, 1);
        let a = self.attn.forward_queries(cls(y.clone()), y);
        let x = cls(x) + a;
        x.clone() + self.mlp.forward(layer_norm(&self.norm2, self.norm_eps, x))
    }

    fn forward_impl(&self, x: Tensor<B, 3>, keep: bool) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let (a, probs) = self
            .attn
            .forward(layer_norm(&self.norm1, self.norm_eps, x.clone()), keep);
        let x = x + a;
        let x = x.clone() + self.mlp.forward(layer_norm(&self.norm2, self.norm_eps, x));
        (x, probs)
    }
}

/// A Vision Transformer backbone (and optional built-in head).
#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    /// Patch embedding.
    pub patch_embed: PatchEmbed<B>,
    /// CLS token `[1, 1, D]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// Learned position embedding `[1, 1+N, D]`, row 0 for CLS.
    pub pos_embed: Param<Tensor<B, 3>>,
    /// Dropout after adding the position embedding.
    pub pos_drop: Dropout,
    /// The blocks, input side first.
    pub blocks: Vec<Block<B>>,
    /// Final LayerNorm (`encoder_norm`).
    pub norm: LayerNorm<B>,
    /// Optional classifier head `D → C` (weight `[D, C]`).
    pub head: Option<Linear<B>>,
    /// The architecture this model was built with.
    #[module(skip)]
    pub config: VitConfig,
}

impl VitConfig {
    /// Builds a randomly initialised model (truncated-normal-like small weights; use the weight
    /// loaders for real checkpoints).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vit<B> {
        let d = self.hidden;
        let linear = |i: usize, o: usize| LinearConfig::new(i, o).init::<B>(device);
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init::<B>(device)
        };
        let drop = DropoutConfig::new(self.dropout).init();
        let blocks = (0..self.depth)
            .map(|_| Block {
                norm1: norm(),
                attn: Attention {
                    query: linear(d, d),
                    key: linear(d, d),
                    value: linear(d, d),
                    out: linear(d, d),
                    attn_drop: DropoutConfig::new(self.attention_dropout).init(),
                    proj_drop: drop.clone(),
                    heads: self.heads,
                },
                norm2: norm(),
                norm_eps: self.layer_norm_eps,
                mlp: Mlp {
                    fc1: linear(d, self.mlp_dim),
                    fc2: linear(self.mlp_dim, d),
                    drop: drop.clone(),
                },
            })
            .collect();
        let normal = Distribution::Normal(0.0, 0.02);
        Vit {
            patch_embed: PatchEmbed {
                weight: Param::from_tensor(Tensor::random([self.patch_dim(), d], normal, device)),
                bias: Param::from_tensor(Tensor::zeros([d], device)),
                patch_size: self.patch_size,
            },
            cls_token: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
            pos_embed: Param::from_tensor(Tensor::random([1, 1 + self.num_patches(), d], normal, device)),
            pos_drop: drop,
            blocks,
            norm: norm(),
            head: self.num_classes.map(|c| linear(d, c)),
            config: self.clone(),
        }
    }
}

impl<B: Backend> Vit<B> {
    /// Patch-embeds `[B, C, H, W]` images, prepends CLS and adds the position embedding:
    /// `[B, 1+N, D]`.
    pub fn embed(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let patches = self.patch_embed.forward(images);
        let [b, _, d] = patches.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1) + self.pos_embed.val();
        crate::kernels::dropout(x, self.pos_drop.prob)
    }

    /// Final LayerNorm over the sequence, then the CLS token: `[B, D]`.
    pub fn forward_features(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, _, d] = tokens.dims();
        // LayerNorm acts token by token, so normalising CLS alone equals normalising the sequence.
        let cls = tokens.slice([0..b, 0..1, 0..d]);
        self.norm.forward(cls).reshape([b, d])
    }

    /// [`Self::forward_features`] followed by the built-in head, if any (else the features).
    pub fn forward_head(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        let features = self.forward_features(tokens);
        match &self.head {
            Some(head) => head.forward(features),
            None => features,
        }
    }

    /// Whole forward pass without prompts: images → logits (or features when there is no head).
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.embed(images);
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            // Only CLS reaches the head: the last block computes that row alone.
            x = if i == last {
                block.forward_cls(x)
            } else {
                block.forward(x)
            };
        }
        self.forward_head(x)
    }

    /// Returns the model with every dropout set to `p` (`0.0` makes training behave as eval,
    /// which is what prompt methods need from a frozen backbone).
    pub fn with_dropout(mut self, p: f64, attention_p: f64) -> Self {
        self.config.dropout = p;
        self.config.attention_dropout = attention_p;
        self.pos_drop.prob = p;
        for block in &mut self.blocks {
            block.attn.attn_drop.prob = attention_p;
            block.attn.proj_drop.prob = p;
            block.mlp.drop.prob = p;
        }
        self
    }

    /// Width D.
    pub fn hidden(&self) -> usize {
        self.config.hidden
    }

    /// Number of patch tokens N.
    pub fn num_patches(&self) -> usize {
        self.config.num_patches()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    #[test]
    fn gelu_exact_has_the_exact_erf_derivative() {
        type A = Autodiff<Flex>;
        let xs = vec![-3.0f32, -1.0, -0.3, 0.0, 0.4, 1.5, 2.5];
        let x = Tensor::<A, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &Default::default())
            .require_grad();
        let y = gelu_exact(x.clone());
        let g = x.grad(&y.clone().sum().backward()).unwrap();
        let g = g.into_data().convert::<f32>().into_vec::<f32>().unwrap();
        let y = y.into_data().convert::<f32>().into_vec::<f32>().unwrap();
        // Reference values of x·Φ(x) and Φ(x) + x·φ(x) (computed in f64 with math.erf).
        let expect_y = [
            -0.0040497, -0.1586553, -0.1146266, 0.0, 0.2621687, 1.3997892, 2.4844758,
        ];
        let expect_g = [
            -0.0119456, -0.0833155, 0.2676722, 0.5, 0.8027298, 1.1274692, 1.0376111,
        ];
        for i in 0..xs.len() {
            assert!((y[i] - expect_y[i]).abs() < 2e-6, "gelu({}) = {}", xs[i], y[i]);
            assert!((g[i] - expect_g[i]).abs() < 2e-6, "gelu'({}) = {}", xs[i], g[i]);
        }
    }

    #[test]
    fn a_cls_only_block_gives_the_first_row_of_the_full_block_and_its_gradient() {
        type A = Autodiff<Flex>;
        let dev = Default::default();
        let vit = crate::VitConfig::new(24, 1, 3, 48, 4)
            .init::<A>(&dev)
            .with_dropout(0.0, 0.0);
        let block = &vit.blocks[0];
        let x0 = Tensor::<Flex, 3>::random([2, 9, 24], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let run = |cls_only: bool| {
            let x = Tensor::<A, 3>::from_inner(x0.clone()).require_grad();
            let y = if cls_only {
                block.forward_cls(x.clone())
            } else {
                block.forward(x.clone()).narrow(1, 0, 1)
            };
            let g = x.grad(&y.clone().sum().backward()).map(|g| g.into_data());
            (y.into_data(), g)
        };
        let ((y_cls, g_cls), (y_full, g_full)) = (run(true), run(false));
        assert_eq!(y_cls.shape.as_slice(), &[2, 1, 24]);
        y_cls.assert_approx_eq::<f32>(&y_full, burn::tensor::Tolerance::absolute(1e-5));
        let (Some(g_cls), Some(g_full)) = (g_cls, g_full) else {
            panic!("no gradient reached the block input")
        };
        g_cls.assert_approx_eq::<f32>(&g_full, burn::tensor::Tolerance::absolute(1e-5));
    }

    #[test]
    fn only_backends_with_an_exact_fused_backward_use_it() {
        assert!(fused_gelu_backward_is_exact("autodiff<flex>"));
        assert!(fused_gelu_backward_is_exact("flex"));
        assert!(!fused_gelu_backward_is_exact("autodiff<fusion<jit<wgpu>>>"));
        assert!(!fused_gelu_backward_is_exact("autodiff<cuda>"));
    }
}
