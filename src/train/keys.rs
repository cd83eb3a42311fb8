//! Official PixArt-α checkpoint keys → the diffusers `PixArtTransformer2DModel` layout (the mapping of
//! diffusers' `convert_pixart_alpha_to_diffusers.py`): fused `qkv` and cross-attention `kv` split.

use candle_core::Tensor;
use std::collections::HashMap;

/// Where the official null caption (`y_embedder.y_embedding`) is kept after conversion.
pub const NULL_CAPTION: &str = "y_embedder.y_embedding";

/// One-to-one renames (official, diffusers) outside the blocks.
const TOP: &[(&str, &str)] = &[
    ("x_embedder.proj", "pos_embed.proj"),
    ("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2"),
    ("t_block.1", "adaln_single.linear"),
    ("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
    ("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
    ("csize_embedder.mlp.0", "adaln_single.emb.resolution_embedder.linear_1"),
    ("csize_embedder.mlp.2", "adaln_single.emb.resolution_embedder.linear_2"),
    ("ar_embedder.mlp.0", "adaln_single.emb.aspect_ratio_embedder.linear_1"),
    ("ar_embedder.mlp.2", "adaln_single.emb.aspect_ratio_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
];

/// One-to-one renames inside block `i` (official suffix, diffusers suffix).
const BLOCK: &[(&str, &str)] = &[
    ("attn.proj", "attn1.to_out.0"),
    ("cross_attn.q_linear", "attn2.to_q"),
    ("cross_attn.proj", "attn2.to_out.0"),
    ("mlp.fc1", "ff.net.0.proj"),
    ("mlp.fc2", "ff.net.2"),
    // PixArt-Σ's KV-token compression (blocks that have it).
    ("attn.sr", "attn1.kv_compress.sr"),
    ("attn.norm", "attn1.kv_compress.norm"),
];

/// Moves `from.weight` / `from.bias` to `to.weight` / `to.bias` where present.
fn rename(sd: &mut HashMap<String, Tensor>, out: &mut HashMap<String, Tensor>, from: &str, to: &str) {
    for kind in ["weight", "bias"] {
        if let Some(t) = sd.remove(&format!("{from}.{kind}")) {
            out.insert(format!("{to}.{kind}"), t);
        }
    }
}

/// The number of blocks named `{prefix}{i}.…` among `keys`: one more than the highest index, so that
/// a block with a tensor missing is still counted (and the tensor reported missing).
pub fn block_count<'a>(keys: impl Iterator<Item = &'a String>, prefix: &str) -> usize {
    keys.filter_map(|k| k.strip_prefix(prefix)?.split_once('.')?.0.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// The official key a diffusers tensor name comes from (fused `qkv` / `kv_linear` for the split
/// q, k, v); the name itself when it has no official counterpart.
pub fn official_name(diffusers: &str) -> String {
    if diffusers == "scale_shift_table" {
        return "final_layer.scale_shift_table".into();
    }
    let (base, kind) = diffusers.rsplit_once('.').unwrap_or((diffusers, ""));
    if let Some((from, _)) = TOP.iter().find(|(_, to)| *to == base) {
        return format!("{from}.{kind}");
    }
    let Some(rest) = diffusers.strip_prefix("transformer_blocks.") else { return diffusers.to_string() };
    let Some((i, suffix)) = rest.split_once('.') else { return diffusers.to_string() };
    let (sbase, _) = suffix.rsplit_once('.').unwrap_or((suffix, ""));
    let official = match sbase {
        "attn1.to_q" | "attn1.to_k" | "attn1.to_v" => "attn.qkv".to_string(),
        "attn2.to_k" | "attn2.to_v" => "cross_attn.kv_linear".to_string(),
        "scale_shift_table" => return format!("blocks.{i}.scale_shift_table"),
        _ => match BLOCK.iter().find(|(_, to)| *to == sbase) {
            Some((from, _)) => from.to_string(),
            None => return diffusers.to_string(),
        },
    };
    format!("blocks.{i}.{official}.{kind}")
}

/// Converts an official state dict. Errors list the keys left over (unexpected) and the ones a
/// fused tensor could not be split for.
pub fn official_to_diffusers(mut sd: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, String> {
    let mut out = HashMap::new();
    sd.remove("pos_embed"); // a buffer, recomputed
    if let Some(t) = sd.remove(NULL_CAPTION) {
        out.insert(NULL_CAPTION.to_string(), t);
    }
    if let Some(t) = sd.remove("final_layer.scale_shift_table") {
        out.insert("scale_shift_table".to_string(), t);
    }
    for (from, to) in TOP {
        rename(&mut sd, &mut out, from, to);
    }
    let mut splits = Vec::new();
    let layers = block_count(sd.keys(), "blocks.");
    for i in 0..layers {
        let (b, d) = (format!("blocks.{i}."), format!("transformer_blocks.{i}."));
        for (from, to) in BLOCK {
            rename(&mut sd, &mut out, &format!("{b}{from}"), &format!("{d}{to}"));
        }
        if let Some(t) = sd.remove(&format!("{b}scale_shift_table")) {
            out.insert(format!("{d}scale_shift_table"), t);
        }
        for kind in ["weight", "bias"] {
            splits.push((
                format!("{b}attn.qkv.{kind}"),
                vec![format!("{d}attn1.to_q.{kind}"), format!("{d}attn1.to_k.{kind}"), format!("{d}attn1.to_v.{kind}")],
            ));
            splits.push((
                format!("{b}cross_attn.kv_linear.{kind}"),
                vec![format!("{d}attn2.to_k.{kind}"), format!("{d}attn2.to_v.{kind}")],
            ));
        }
    }
    let mut missing = Vec::new();
    for (from, to) in splits {
        let Some(t) = sd.remove(&from) else {
            missing.push(from);
            continue;
        };
        let parts = t.chunk(to.len(), 0).map_err(|e| format!("{from}: cannot split in {}: {e}", to.len()))?;
        if parts.iter().any(|p| p.dim(0).ok() != parts[0].dim(0).ok()) {
            return Err(format!("{from}: first dimension {:?} does not split in {} equal parts", t.dims(), to.len()));
        }
        out.extend(to.into_iter().zip(parts));
    }
    for key in ["pos_embed.proj.weight", "proj_out.weight", "caption_projection.linear_1.weight", "scale_shift_table"] {
        if !out.contains_key(key) {
            missing.push(official_name(key));
        }
    }
    let mut unexpected: Vec<String> = sd.into_keys().collect();
    unexpected.sort();
    if !missing.is_empty() || !unexpected.is_empty() {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            }
        };
        return Err(format!(
            "not an official PixArt state dict: tensors missing: {}; tensors unexpected: {}",
            list(&missing),
            list(&unexpected)
        ));
    }
    Ok(out)
}

/// The inverse of [`official_to_diffusers`]: fuses q/k/v and k/v back (the null caption, if present,
/// keeps its official name).
pub fn diffusers_to_official(w: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, String> {
    let mut out = HashMap::new();
    let get = |k: &str| w.get(k).cloned().ok_or_else(|| format!("missing weight {k:?}"));
    for (official, diffusers) in TOP {
        for kind in ["weight", "bias"] {
            if let Some(t) = w.get(&format!("{diffusers}.{kind}")) {
                out.insert(format!("{official}.{kind}"), t.clone());
            }
        }
    }
    out.insert("final_layer.scale_shift_table".into(), get("scale_shift_table")?);
    if let Some(t) = w.get(NULL_CAPTION) {
        out.insert(NULL_CAPTION.into(), t.clone());
    }
    let layers = (0..).take_while(|i| w.contains_key(&format!("transformer_blocks.{i}.scale_shift_table"))).count();
    for i in 0..layers {
        let (b, d) = (format!("blocks.{i}."), format!("transformer_blocks.{i}."));
        out.insert(format!("{b}scale_shift_table"), get(&format!("{d}scale_shift_table"))?);
        for (official, diffusers) in BLOCK {
            for kind in ["weight", "bias"] {
                let name = format!("{d}{diffusers}.{kind}");
                // Only the blocks that compress their keys and values have the compression's weights.
                if diffusers.starts_with("attn1.kv_compress") && !w.contains_key(&name) {
                    continue;
                }
                out.insert(format!("{b}{official}.{kind}"), get(&name)?);
            }
        }
        for kind in ["weight", "bias"] {
            let fuse = |names: &[&str]| -> Result<Tensor, String> {
                let parts = names.iter().map(|n| get(&format!("{d}{n}.{kind}"))).collect::<Result<Vec<_>, _>>()?;
                Tensor::cat(&parts, 0).map_err(|e| format!("{d}: cannot fuse {names:?}: {e}"))
            };
            out.insert(format!("{b}attn.qkv.{kind}"), fuse(&["attn1.to_q", "attn1.to_k", "attn1.to_v"])?);
            out.insert(format!("{b}cross_attn.kv_linear.{kind}"), fuse(&["attn2.to_k", "attn2.to_v"])?);
        }
    }
    Ok(out)
}
