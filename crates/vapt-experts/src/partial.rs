//! Partial-k (VPT's baseline): the last k blocks of the backbone train, and so does the final
//! norm, which the authors' rule unfreezes with them (`encoder_norm`; MAE's `fc_norm`). For
//! ViT-B/16: 7,087,872 per block + 1,536, i.e. partial-1 7,089,408, partial-2 14,177,280,
//! partial-4 28,353,024 (head excluded).

/// Whether the backbone tensor at native path `path` (`blocks.11.attn.query.weight`, `norm.bias`)
/// trains under partial-`k` on a backbone of `depth` blocks.
pub fn trains(path: &str, k: usize, depth: usize) -> bool {
    if path.starts_with("norm.") || path.starts_with("fc_norm.") {
        return true;
    }
    path.strip_prefix("blocks.")
        .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .is_some_and(|i| i + k >= depth)
}

#[cfg(test)]
mod tests {
    use super::trains;

    #[test]
    fn the_last_k_blocks_and_the_final_norm_train() {
        assert!(trains("blocks.11.mlp.fc1.weight", 1, 12));
        assert!(!trains("blocks.10.mlp.fc1.weight", 1, 12));
        assert!(trains("blocks.10.norm1.bias", 2, 12));
        assert!(trains("norm.weight", 1, 12) && trains("fc_norm.bias", 1, 12));
        assert!(!trains("pos_embed", 4, 12) && !trains("patch_embed.bias", 12, 12));
        assert!(trains("blocks.0.attn.query.weight", 12, 12));
    }
}
