//! Hugging Face and diffusers model folders: the part of a pipeline folder (`transformer/`, `vae/`,
//! `text_encoder/`), `config.json`, and the weights, single or sharded with an index. Every model
//! loader of the crate finds its files here, and takes its tensors through [`Weights`], which checks
//! each one's presence, shape and dtype as it is taken.

mod weights;

pub use weights::{is_float, not_float, Weights};

/// The `name/` part of a diffusers pipeline folder, or `dir` itself when it has no such subfolder.
pub fn part(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let sub = dir.join(name);
    if sub.is_dir() {
        sub
    } else {
        dir.to_path_buf()
    }
}

/// The file `pixforge models init-tiny` writes into each model folder it makes: its weights are
/// random (or, for the tiny VAE, made to carry each 8×8 patch's colour), so pictures made through it
/// are not real ones.
pub const RANDOM_WEIGHTS_FILE: &str = "pixforge-random-weights.json";

/// Whether the `name/` part of model folder `dir` holds weights `models init-tiny` made up.
pub fn has_random_weights(dir: &std::path::Path, name: &str) -> bool {
    part(dir, name).join(RANDOM_WEIGHTS_FILE).is_file()
}

/// A note for pictures made with models of which some were made up by `models init-tiny`:
/// `models` lists each model's folder, its part name and what to call it (`T5`); `None` when every
/// model is a real one.
pub fn random_weights_note(models: &[(&std::path::Path, &str, &str)]) -> Option<String> {
    let made_up: Vec<&str> =
        models.iter().filter(|(dir, part, _)| has_random_weights(dir, part)).map(|(_, _, what)| *what).collect();
    let list = match made_up.as_slice() {
        [] => return None,
        [one] => one.to_string(),
        [first @ .., last] => format!("{} and {last}", first.join(", ")),
    };
    // The tiny VAE carries the image (its latents are each 8×8 patch's colour): alone, it only blurs.
    let so = if made_up.iter().all(|what| *what == "VAE") {
        "it decodes each latent to an 8x8 patch of colour, so these are blurred pictures at best"
    } else {
        "so these are not pictures of the prompts"
    };
    Some(format!("random tiny models: the {list} made up by `pixforge models init-tiny`; {so}"))
}

/// Reads and parses a `config.json`, naming the file and the field (`text_config.hidden_size`) on error.
pub fn read_config<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let at = if field == "." { String::new() } else { format!("field `{field}`: ") };
        anyhow::anyhow!("{}: unexpected config: {at}{}", path.display(), e.inner())
    })
}

/// The safetensors weight files of a model folder: `{stem}.safetensors`, or the shards listed in
/// `{stem}.safetensors.index.json`.
pub fn weight_files(dir: &std::path::Path, stem: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let single = dir.join(format!("{stem}.safetensors"));
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if !index.is_file() {
        anyhow::bail!("{}: expected {stem}.safetensors or {stem}.safetensors.index.json", dir.display());
    }
    let v: serde_json::Value = read_config(&index)?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("{}: expected a \"weight_map\" object", index.display()))?;
    let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}
