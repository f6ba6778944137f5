//! The backend-generic Vision Transformer.
//!
//! Token layout: `[CLS, patch_0 .. patch_{N-1}]` after [`Vit::embed`], patches row-major
//! (n = r·g + q, r the patch row). Blocks are pre-LN:
//! `h += Out(Attn(LN1(h)))`, `h += MLP(LN2(h))`, with separate q/k/v projections, heads laid out
//! head-major inside the width (index h·head_dim + j), exact erf GELU, LayerNorm eps from the config.
//! DINOv2-style blocks scale both branches by a learned per-channel γ ([`LayerScale`]):
//! `h += γ₁ ⊙ Out(Attn(LN1(h)))`, `h += γ₂ ⊙ MLP(LN2(h))`.
//!
//! The API is built for prompt methods: [`Vit::embed`] gives the token sequence, the caller runs
//! [`Vit::blocks`] one at a time on a sequence it controls (inserting or replacing prompt tokens in
//! between), optionally asking a block for its attention probabilities, and finishes with
//! [`Vit::forward_head`] (final norm → CLS → head).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use vapt_kernels::nn::{Dropout, LayerNorm, Linear};

use crate::config::{Pool, VitConfig};
use crate::delta::{BlockDelta, NoDelta, Projection};
use crate::weights::posemb::bicubic_matrix;

/// `linear(x)` plus what `delta` adds to projection `p` for the input `x`.
fn project<B: Backend>(
    linear: &Linear<B>,
    p: Projection,
    x: Tensor<B, 3>,
    delta: &dyn BlockDelta<B>,
) -> Tensor<B, 3> {
    let extra = delta.projection(p, &x);
    let y = linear.forward(x);
    match extra {
        Some(e) => y + e,
        None => y,
    }
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
        self.attend(x.clone(), x, keep_probs, &NoDelta)
    }

    /// Attention of the tokens `queries` `[B, Tq, D]` over the sequence `x` `[B, T, D]` (keys and
    /// values): `[B, Tq, D]`. With `queries` a subset of `x`'s rows it equals those rows of
    /// [`Self::forward`].
    pub fn forward_queries(&self, queries: Tensor<B, 3>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.attend(queries, x, false, &NoDelta).0
    }

    /// Attention of `queries` over `x` with `delta`'s additions to the four projections; with
    /// `keep_probs`, also the probabilities.
    pub fn attend(
        &self,
        queries: Tensor<B, 3>,
        x: Tensor<B, 3>,
        keep_probs: bool,
        delta: &dyn BlockDelta<B>,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let h = self.heads;
        let hd = x.dims()[2] / h;
        let scale = 1.0 / (hd as f32).sqrt();
        let q = project(&self.query, Projection::Query, queries, delta);
        let k = project(&self.key, Projection::Key, x.clone(), delta);
        let v = project(&self.value, Projection::Value, x, delta);
        let dropout_active = self.attn_drop.prob != 0.0 && B::ad_enabled(&q.device());
        let (ctx, kept) = if keep_probs || dropout_active {
            // softmax(q·kᵀ / √hd) as its own tensor, to keep and/or drop out.
            let probs = vapt_kernels::attention_probs(q, k, h, scale);
            let kept = keep_probs.then(|| probs.clone());
            let probs = self.attn_drop.forward(probs);
            (vapt_kernels::attention_context(probs, v), kept)
        } else {
            // The same maths as one fused op (the probabilities are neither kept nor dropped).
            (vapt_kernels::attention(q, k, v, h, scale), None)
        };
        let out = project(&self.out, Projection::Out, ctx, delta);
        (self.proj_drop.forward(out), kept)
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
        self.forward_delta(x, &NoDelta)
    }

    /// [`Self::forward`] with `delta`'s additions to `fc1` and `fc2` (not its MLP-output hook,
    /// which the block applies).
    pub fn forward_delta(&self, x: Tensor<B, 3>, delta: &dyn BlockDelta<B>) -> Tensor<B, 3> {
        let x = self
            .drop
            .forward(vapt_kernels::gelu(project(&self.fc1, Projection::Fc1, x, delta)));
        self.drop.forward(project(&self.fc2, Projection::Fc2, x, delta))
    }
}

/// LayerScale (DINOv2, CaiT): the branch output times a learned per-channel γ.
#[derive(Module, Debug)]
pub struct LayerScale<B: Backend> {
    /// γ `[D]` (`ls1.gamma` in timm, `layer_scale1.lambda1` in Hugging Face).
    pub gamma: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerScale<B> {
    /// γ = `init` in every channel.
    pub fn new(d: usize, init: f32, device: &B::Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::full([d], init, device)),
        }
    }

    /// `[B, T, D]` → `γ ⊙ x`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x * self.gamma.val().unsqueeze::<3>()
    }
}

/// `scale(x)` when the block has that LayerScale, else `x`.
fn scaled<B: Backend>(scale: &Option<LayerScale<B>>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    match scale {
        Some(s) => s.forward(x),
        None => x,
    }
}

/// Which rows a block computes, and whether it keeps its attention probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every token.
    All,
    /// Every token, keeping the attention probabilities `[B, H, T, T]`.
    AllWithAttention,
    /// The first token (CLS) only, `[B, 1, D]`: what a last block needs when only CLS goes on.
    ClsOnly,
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
    /// LayerScale of the attention branch (DINOv2), `ls1`.
    pub ls1: Option<LayerScale<B>>,
    /// LayerScale of the MLP branch (DINOv2), `ls2`.
    pub ls2: Option<LayerScale<B>>,
}

impl<B: Backend> Block<B> {
    /// Runs the block on `[B, T, D]` tokens.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.run(x, Rows::All, &NoDelta).0
    }

    /// Runs the block and also returns its attention probabilities `[B, H, T, T]`.
    pub fn forward_with_attention(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let (x, probs) = self.run(x, Rows::AllWithAttention, &NoDelta);
        let probs = probs.unwrap_or_else(|| unreachable!("attention asked to keep its probabilities"));
        (x, probs)
    }

    /// The block's output at the first token (CLS) only, `[B, 1, D]`: the same values as the first
    /// row of [`Self::forward`], without computing the other rows' queries, output projection and
    /// MLP. What a last block needs when only CLS goes on to the head.
    pub fn forward_cls(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.run(x, Rows::ClsOnly, &NoDelta).0
    }

    /// The block on `[B, T, D]` tokens computing `rows`, with what `delta` adds inside it: the
    /// output, and the attention probabilities when `rows` keeps them. With LayerScale, `delta`'s
    /// MLP-output hook (an adapter) sees the scaled branch, what the block adds to the residual.
    pub fn run(
        &self,
        x: Tensor<B, 3>,
        rows: Rows,
        delta: &dyn BlockDelta<B>,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let y = self.norm1.forward(x.clone());
        let (x, probs) = match rows {
            Rows::ClsOnly => {
                let cls = |t: Tensor<B, 3>| vapt_kernels::narrow_tokens(t, 0, 1);
                let (a, _) = self.attn.attend(cls(y.clone()), y, false, delta);
                (cls(x) + scaled(&self.ls1, a), None)
            }
            _ => {
                let (a, probs) = self
                    .attn
                    .attend(y.clone(), y, rows == Rows::AllWithAttention, delta);
                (x + scaled(&self.ls1, a), probs)
            }
        };
        let m = self.mlp.forward_delta(self.norm2.forward(x.clone()), delta);
        let m = delta.mlp_output(scaled(&self.ls2, m));
        (x + m, probs)
    }
}

/// A Vision Transformer backbone (and optional built-in head).
#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    /// Patch embedding.
    pub patch_embed: PatchEmbed<B>,
    /// CLS token `[1, 1, D]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// Learned position embedding `[1, 1+N, D]`, row 0 for CLS; stored for the grid
    /// [`VitConfig::pos_grid`] and resized to the input's by [`Vit::position_embedding`].
    pub pos_embed: Param<Tensor<B, 3>>,
    /// The bicubic resize of the stored grid to the input's, `[N, N_stored]` (a constant, neither
    /// trained nor saved), when [`VitConfig::resizes_pos_embed`]: built once with the model
    /// instead of at every forward pass.
    pub pos_resize: Option<Tensor<B, 2>>,
    /// Dropout after adding the position embedding.
    pub pos_drop: Dropout,
    /// The blocks, input side first.
    pub blocks: Vec<Block<B>>,
    /// Final LayerNorm of the CLS token (`encoder_norm`; CLS pooling).
    pub norm: Option<LayerNorm<B>>,
    /// LayerNorm of the mean over tokens 1.. (MAE's `fc_norm`; mean pooling).
    pub fc_norm: Option<LayerNorm<B>>,
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
        let linear = |i: usize, o: usize| Linear::new(i, o, device);
        let norm = || LayerNorm::new(d, self.layer_norm_eps, device);
        let drop = Dropout::new(self.dropout);
        let blocks = (0..self.depth)
            .map(|_| Block {
                norm1: norm(),
                attn: Attention {
                    query: linear(d, d),
                    key: linear(d, d),
                    value: linear(d, d),
                    out: linear(d, d),
                    attn_drop: Dropout::new(self.attention_dropout),
                    proj_drop: drop.clone(),
                    heads: self.heads,
                },
                norm2: norm(),
                mlp: Mlp {
                    fc1: linear(d, self.mlp_dim),
                    fc2: linear(self.mlp_dim, d),
                    drop: drop.clone(),
                },
                // DINOv2 initialises γ at 1e-5; loaded files replace it.
                ls1: self.layer_scale.then(|| LayerScale::new(d, 1e-5, device)),
                ls2: self.layer_scale.then(|| LayerScale::new(d, 1e-5, device)),
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
            pos_embed: Param::from_tensor(Tensor::random(
                [1, 1 + self.pos_grid() * self.pos_grid(), d],
                normal,
                device,
            )),
            pos_resize: self.resizes_pos_embed().then(|| {
                let (from, to) = (self.pos_grid(), self.grid());
                Tensor::from_data(
                    TensorData::new(bicubic_matrix(from, to), [to * to, from * from]),
                    device,
                )
            }),
            pos_drop: drop,
            blocks,
            norm: (self.pool() == Pool::Cls).then(norm),
            fc_norm: (self.pool() == Pool::Mean).then(norm),
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
        let x = Tensor::cat(vec![cls, patches], 1) + self.position_embedding();
        self.pos_drop.forward(x)
    }

    /// The position embedding for the input's grid, `[1, 1+N, D]`: the stored one, or (when it is
    /// stored for another grid) its patch rows resized bicubically (a = −0.75, half-pixel centres,
    /// no antialias; PyTorch's `interpolate(mode="bicubic", align_corners=False)`) with the CLS row
    /// kept. The resize is one matrix product, so gradients reach the stored table.
    pub fn position_embedding(&self) -> Tensor<B, 3> {
        let pos = self.pos_embed.val();
        let Some(weights) = &self.pos_resize else {
            return pos;
        };
        let [_, rows, d] = pos.dims();
        let [n, _] = weights.dims();
        let cls = pos.clone().narrow(1, 0, 1);
        let grid = pos.narrow(1, 1, rows - 1).reshape([rows - 1, d]);
        let grid = weights.clone().matmul(grid).reshape([1, n, d]);
        Tensor::cat(vec![cls, grid], 1)
    }

    /// The feature the head reads, `[B, D]`: the final LayerNorm of the CLS token, or (MAE)
    /// `fc_norm` of the mean over every token after CLS.
    pub fn forward_features(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        self.pool(tokens).1
    }

    /// The pooled tokens before their LayerNorm (the CLS row, or the mean over tokens 1..) and the
    /// feature after it, both `[B, D]`.
    pub fn pool(&self, tokens: Tensor<B, 3>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let [b, t, d] = tokens.dims();
        // LayerNorm acts token by token, so normalising CLS alone equals normalising the sequence.
        let (pooled, norm) = match (&self.norm, &self.fc_norm) {
            (Some(norm), _) => (tokens.narrow(1, 0, 1), norm),
            (None, Some(fc_norm)) => (tokens.narrow(1, 1, t - 1).mean_dim(1), fc_norm),
            (None, None) => unreachable!("a backbone has `norm` or `fc_norm` (VitConfig::init)"),
        };
        (
            pooled.clone().reshape([b, d]),
            norm.forward(pooled).reshape([b, d]),
        )
    }

    /// Whether the head reads only the CLS token, so that the last block may compute that row
    /// alone ([`Block::forward_cls`]).
    pub fn reads_cls_only(&self) -> bool {
        self.config.pool() == Pool::Cls
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
            // When only CLS reaches the head, the last block computes that row alone.
            x = if i == last && self.reads_cls_only() {
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

    /// The final LayerNorm of every token, `[B, T, D]` (DINOv2's `x_norm`; CLS-pooling backbones
    /// only, `None` for MAE's mean pooling): what other implementations' backbone outputs are
    /// compared with.
    pub fn normed_tokens(&self, tokens: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        self.norm.as_ref().map(|norm| norm.forward(tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

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
}
