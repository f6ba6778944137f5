//! Bias tuning (BitFit; the authors' `tinytl-bias`): every backbone tensor named `bias` trains —
//! patch embedding, q/k/v/out, both MLP layers, every LayerNorm's β and the final norm's. For
//! ViT-B/16 that is 102,912 parameters (head excluded). With VPT-deep prompts it is the paper's
//! prompt + bias row (`vpt-deep+bias`: 195,072 at Np = 10).

/// Whether the backbone tensor at native path `path` trains under bias tuning.
pub fn trains(path: &str) -> bool {
    path.rsplit('.').next() == Some("bias")
}

#[cfg(test)]
mod tests {
    use super::trains;

    #[test]
    fn every_bias_and_nothing_else_trains() {
        assert!(trains("patch_embed.bias") && trains("blocks.3.norm2.bias") && trains("norm.bias"));
        assert!(!trains("blocks.3.norm2.weight") && !trains("cls_token") && !trains("pos_embed"));
    }
}
