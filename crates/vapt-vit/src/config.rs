//! Architecture configuration of the Vision Transformer and the variant parser.
//!
//! The architecture config says *what shape* the network has. Where its weights came from (mean/std,
//! source file, hash) lives apart, in [`crate::PretrainedCfg`].

use serde::{Deserialize, Serialize};

/// A standard ViT size (the paper family's names, as in timm and big_vision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Size name (`Ti`, `S`, `B`, `L`, `H`).
    pub name: &'static str,
    /// Token width D.
    pub hidden: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width.
    pub mlp_dim: usize,
}

/// Every standard size: the one table the variant parser, display names and the head count of
/// files that do not store it are read from.
pub const VARIANTS: [Variant; 5] = [
    Variant {
        name: "Ti",
        hidden: 192,
        depth: 12,
        heads: 3,
        mlp_dim: 768,
    },
    Variant {
        name: "S",
        hidden: 384,
        depth: 12,
        heads: 6,
        mlp_dim: 1536,
    },
    Variant {
        name: "B",
        hidden: 768,
        depth: 12,
        heads: 12,
        mlp_dim: 3072,
    },
    Variant {
        name: "L",
        hidden: 1024,
        depth: 24,
        heads: 16,
        mlp_dim: 4096,
    },
    Variant {
        name: "H",
        hidden: 1280,
        depth: 32,
        heads: 16,
        mlp_dim: 5120,
    },
];

/// `Ti|S|B|L|H`, for messages.
fn size_names() -> String {
    VARIANTS.iter().map(|v| v.name).collect::<Vec<_>>().join("|")
}

/// The head count of a width when a file does not store it (timm fuses q/k/v): the standard size of
/// that width, else heads of width 64.
pub fn standard_heads(hidden: usize) -> Option<usize> {
    match VARIANTS.iter().find(|v| v.hidden == hidden) {
        Some(v) => Some(v.heads),
        None if hidden > 0 && hidden.is_multiple_of(64) => Some(hidden / 64),
        None => None,
    }
}

/// Which pre-training a backbone comes from. It decides what the authors' code decides for it: the
/// feature the head reads ([`Pool`]) and, for the experts, the rules of the self-supervised
/// variants (one shared projector, the static deep-prompt allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackboneKind {
    /// Supervised (ImageNet-21k, timm, vapt's own): final-norm CLS token.
    #[default]
    Supervised,
    /// MAE (`mae_pretrain_vit_base.pth`): `fc_norm` of the mean over every token after CLS.
    Mae,
    /// MoCo v3 (`linear-vit-b-300ep.pth.tar`): final-norm CLS token.
    MocoV3,
}

/// The feature the head reads from the last block's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The final LayerNorm (`norm`) of the CLS token.
    Cls,
    /// `fc_norm` of the mean over tokens 1.. (prompts and patches; not CLS).
    Mean,
}

impl BackboneKind {
    /// Every kind, as named on the command line.
    pub const ALL: [BackboneKind; 3] = [Self::Supervised, Self::Mae, Self::MocoV3];

    /// `supervised`, `mae`, `moco-v3`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Supervised => "supervised",
            Self::Mae => "mae",
            Self::MocoV3 => "moco-v3",
        }
    }

    /// The feature the head reads.
    pub fn pool(self) -> Pool {
        match self {
            Self::Mae => Pool::Mean,
            Self::Supervised | Self::MocoV3 => Pool::Cls,
        }
    }

    /// Whether the authors' self-supervised prompted classes apply (MAE, MoCo v3).
    pub fn self_supervised(self) -> bool {
        self != Self::Supervised
    }
}

impl std::fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackboneKind {
    type Err = String;

    /// `supervised` (`sup`), `mae`, `moco-v3` (`moco`, `mocov3`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "supervised" | "sup" => Ok(Self::Supervised),
            "mae" => Ok(Self::Mae),
            "moco-v3" | "moco" | "mocov3" => Ok(Self::MocoV3),
            _ => Err(format!(
                "unknown backbone kind `{s}`: expected supervised, mae or moco-v3"
            )),
        }
    }
}

/// Error from parsing a variant name such as `B/16`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VariantError {
    /// The size letter is not one of the known ones.
    #[error(
        "unknown ViT variant `{0}`: expected a size {sizes} with a patch (e.g. B/16, H/14), an \
         explicit `D<width>-L<depth>-H<heads>-M<mlp>-P<patch>`, or `auto`",
        sizes = size_names()
    )]
    Unknown(String),
    /// The configuration is not consistent (e.g. width not divisible by heads).
    #[error("invalid ViT configuration: {0}")]
    Invalid(String),
}

/// Architecture of a (pre-LN, CLS-token) Vision Transformer, as in Google's `vit_jax` and timm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Square input side in pixels (224 for the paper).
    pub image_size: usize,
    /// Square patch side in pixels.
    pub patch_size: usize,
    /// Input channels (3).
    pub in_channels: usize,
    /// Token width D.
    pub hidden: usize,
    /// Number of transformer blocks L.
    pub depth: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Hidden width of the block MLP.
    pub mlp_dim: usize,
    /// LayerNorm epsilon in the backbone (1e-6 for Google/timm ViTs).
    pub layer_norm_eps: f64,
    /// Dropout after the embedding, the attention output and in the MLP (0.1 in the paper's config).
    /// Only ever active while training on an autodiff backend, and never for prompt methods.
    pub dropout: f64,
    /// Dropout on the attention probabilities (0.0 in the paper's config).
    pub attention_dropout: f64,
    /// Classes of the built-in head; `None` builds the backbone without a head.
    pub num_classes: Option<usize>,
    /// The pre-training it comes from (decides the pooling).
    #[serde(default)]
    pub kind: BackboneKind,
    /// LayerScale (DINOv2): a learned per-channel γ multiplies the attention output and the MLP
    /// output before each is added to the residual stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub layer_scale: bool,
    /// The patch grid the position embedding is stored for, when it differs from the input's and
    /// the model resizes it at every forward pass (DINOv2: 37 × 37 for 518 px, resized bicubically
    /// with a = −0.75, half-pixel centres, no antialias, the CLS row kept). `None`: stored for the
    /// input's grid (files of other grids are resampled once, when loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_embed_grid: Option<usize>,
}

impl VitConfig {
    /// A config with explicit sizes, 224 px input, eps 1e-6, dropout 0.1/0.0 and no head.
    pub fn new(hidden: usize, depth: usize, heads: usize, mlp_dim: usize, patch_size: usize) -> Self {
        Self {
            image_size: 224,
            patch_size,
            in_channels: 3,
            hidden,
            depth,
            heads,
            mlp_dim,
            layer_norm_eps: 1e-6,
            dropout: 0.1,
            attention_dropout: 0.0,
            num_classes: None,
            kind: BackboneKind::Supervised,
            layer_scale: false,
            pos_embed_grid: None,
        }
    }

    /// ViT-B/16: D 768, 12 blocks, 12 heads, MLP 3072, patch 16.
    pub fn vit_b16() -> Self {
        Self::new(768, 12, 12, 3072, 16)
    }

    /// Parses a variant name: `Ti/16`, `S/16`, `B/16`, `B/32`, `L/16`, `H/14` (any size of
    /// [`VARIANTS`] with any patch size), case-insensitive, with an optional `ViT-` prefix; or an explicit
    /// `D768-L12-H12-M3072-P16` (dash-separated, any order).
    pub fn from_variant(name: &str) -> Result<Self, VariantError> {
        let unknown = || VariantError::Unknown(name.to_string());
        let trimmed = name.trim();
        let lower = trimmed.to_ascii_lowercase();
        let body = lower.strip_prefix("vit-").unwrap_or(&lower);
        let body = body.strip_prefix("vit_").unwrap_or(body);
        if let Some((size, patch)) = body.split_once(['/', '_']) {
            let patch: usize = patch.parse().map_err(|_| unknown())?;
            let v = VARIANTS
                .iter()
                .find(|v| v.name.eq_ignore_ascii_case(size))
                .ok_or_else(unknown)?;
            let cfg = Self::new(v.hidden, v.depth, v.heads, v.mlp_dim, patch);
            cfg.validate()?;
            return Ok(cfg);
        }
        // Explicit form.
        let (mut d, mut l, mut h, mut m, mut p) = (None, None, None, None, None);
        for part in body.split('-') {
            let (key, value) = part.split_at(part.len().min(1));
            let value: usize = value.parse().map_err(|_| unknown())?;
            match key {
                "d" => d = Some(value),
                "l" => l = Some(value),
                "h" => h = Some(value),
                "m" => m = Some(value),
                "p" => p = Some(value),
                _ => return Err(unknown()),
            }
        }
        match (d, l, h, m, p) {
            (Some(d), Some(l), Some(h), Some(m), Some(p)) => {
                let cfg = Self::new(d, l, h, m, p);
                cfg.validate()?;
                Ok(cfg)
            }
            _ => Err(unknown()),
        }
    }

    /// Sets the input image side.
    pub fn with_image_size(mut self, image_size: usize) -> Self {
        self.image_size = image_size;
        self
    }

    /// Sets the number of classes of the built-in head (`None`: no head).
    pub fn with_num_classes(mut self, num_classes: Option<usize>) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// Sets the pre-training kind (and with it the pooling).
    pub fn with_kind(mut self, kind: BackboneKind) -> Self {
        self.kind = kind;
        self
    }

    /// The feature the head reads.
    pub fn pool(&self) -> Pool {
        self.kind.pool()
    }

    /// A DINOv2-style backbone: LayerScale in every block, the position embedding stored for a
    /// `pos_grid` × `pos_grid` patch grid and resized at every forward pass to the input's grid.
    pub fn with_dinov2(mut self, pos_grid: usize) -> Self {
        self.layer_scale = true;
        self.pos_embed_grid = Some(pos_grid);
        self
    }

    /// Side of the patch grid the position embedding is stored for (the input's grid unless
    /// [`Self::pos_embed_grid`] says otherwise).
    pub fn pos_grid(&self) -> usize {
        self.pos_embed_grid.unwrap_or_else(|| self.grid())
    }

    /// Whether the stored position embedding is resized at every forward pass.
    pub fn resizes_pos_embed(&self) -> bool {
        self.pos_grid() != self.grid()
    }

    /// Sets both dropout rates; prompt methods use 0 (the backbone behaves as in eval).
    pub fn with_dropout(mut self, dropout: f64, attention_dropout: f64) -> Self {
        self.dropout = dropout;
        self.attention_dropout = attention_dropout;
        self
    }

    /// Patch-grid side g = image_size / patch_size.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of patches N = g².
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Input width of the patch embedding: channels · p².
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.patch_size * self.patch_size
    }

    /// Checks internal consistency.
    pub fn validate(&self) -> Result<(), VariantError> {
        let bad = |m: String| Err(VariantError::Invalid(m));
        if self.hidden == 0 || self.depth == 0 || self.heads == 0 || self.mlp_dim == 0 {
            return bad("width, depth, heads and MLP width must be positive".into());
        }
        if self.patch_size == 0 || self.in_channels == 0 {
            return bad("patch size and channels must be positive".into());
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return bad(format!(
                "width {} is not divisible by {} heads",
                self.hidden, self.heads
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) || self.image_size == 0 {
            return bad(format!(
                "image size {} is not a positive multiple of patch size {}",
                self.image_size, self.patch_size
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) || !(0.0..1.0).contains(&self.attention_dropout) {
            return bad("dropout rates must lie in [0, 1)".into());
        }
        if self.pos_embed_grid == Some(0) {
            return bad("the position embedding's grid must be positive".into());
        }
        if self.num_classes == Some(0) {
            return bad("a head needs at least one class (use no head instead)".into());
        }
        Ok(())
    }

    /// A short human-readable name, e.g. `ViT-B/16 @224` or `D48-L4-H4-M96-P16 @224`.
    pub fn display_name(&self) -> String {
        let size = VARIANTS
            .iter()
            .find(|v| {
                (v.hidden, v.depth, v.heads, v.mlp_dim) == (self.hidden, self.depth, self.heads, self.mlp_dim)
            })
            .map(|v| format!("ViT-{}/{}", v.name, self.patch_size));
        let name = size.unwrap_or_else(|| {
            format!(
                "D{}-L{}-H{}-M{}-P{}",
                self.hidden, self.depth, self.heads, self.mlp_dim, self.patch_size
            )
        });
        let mut notes = Vec::new();
        if self.kind != BackboneKind::Supervised {
            notes.push(self.kind.to_string());
        }
        if self.layer_scale {
            notes.push("LayerScale".to_string());
        }
        if self.resizes_pos_embed() {
            let g = self.pos_grid();
            notes.push(format!("pos-emb {g}×{g} bicubic"));
        }
        match notes.is_empty() {
            true => format!("{name} @{}", self.image_size),
            false => format!("{name} @{} ({})", self.image_size, notes.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_variants() {
        let b = VitConfig::from_variant("B/16").unwrap();
        assert_eq!(
            (b.hidden, b.depth, b.heads, b.mlp_dim, b.patch_size),
            (768, 12, 12, 3072, 16)
        );
        assert_eq!(b.grid(), 14);
        assert_eq!(b.num_patches(), 196);
        let h = VitConfig::from_variant("vit-h/14").unwrap();
        assert_eq!((h.hidden, h.depth, h.heads, h.patch_size), (1280, 32, 16, 14));
        assert_eq!(h.grid(), 16);
        let ti = VitConfig::from_variant("Ti/16").unwrap();
        assert_eq!((ti.hidden, ti.heads), (192, 3));
        let b32 = VitConfig::from_variant("B/32").unwrap();
        assert_eq!(b32.grid(), 7);
        let s = VitConfig::from_variant("S/16").unwrap();
        assert_eq!(s.hidden, 384);
        let l = VitConfig::from_variant("L/16").unwrap();
        assert_eq!(l.depth, 24);
    }

    #[test]
    fn parses_explicit_dims() {
        let c = VitConfig::from_variant("D48-L4-H4-M96-P16").unwrap();
        assert_eq!(
            (c.hidden, c.depth, c.heads, c.mlp_dim, c.patch_size),
            (48, 4, 4, 96, 16)
        );
        assert_eq!(c.head_dim(), 12);
    }

    #[test]
    fn rejects_bad_variants() {
        assert!(matches!(
            VitConfig::from_variant("X/16"),
            Err(VariantError::Unknown(_))
        ));
        assert!(matches!(
            VitConfig::from_variant("B/sixteen"),
            Err(VariantError::Unknown(_))
        ));
        assert!(matches!(
            VitConfig::from_variant("D50-L4-H4-M96-P16"),
            Err(VariantError::Invalid(_))
        ));
        assert!(matches!(
            VitConfig::from_variant("B/15"),
            Err(VariantError::Invalid(_))
        ));
    }

    #[test]
    fn vit_b16_has_the_papers_parameter_count() {
        assert_eq!(VitConfig::vit_b16().num_backbone_params(), 85_798_656);
    }
}
