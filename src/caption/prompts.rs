//! The instructions sent with each image: the PixArt-α paper's prompt, its "with alt-text" variant, or
//! a user template with `{alt}` (the sample's source caption), `{key}` and any top-level field of the
//! sample's `.json` (`{width}`, `{url}`, …).

/// The paper's prompt (PixArt-α §2.2, LLaVA).
pub const PAPER: &str = "Describe this image and its style in a very detailed manner";
/// The variant that shows the model the source caption (PixArt-α's `VLM_caption_lightning.py`).
pub const WITH_ALT: &str = "Given the caption of this image \"{alt}\", describe this image in a very detailed manner";

/// One prompt: its id (recorded with every caption) and template.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// `paper`, `with-alt`, or `custom-N` (the N-th `--prompt`, from 0).
    pub id: String,
    /// The template.
    pub template: String,
}

impl Prompt {
    /// The prompt a `--prompt` value names: `paper`, `with-alt`, or a template of its own.
    pub fn parse(value: &str, index: usize) -> anyhow::Result<Self> {
        let (id, template) = match value {
            "paper" => ("paper".to_string(), PAPER.to_string()),
            "with-alt" => ("with-alt".to_string(), WITH_ALT.to_string()),
            t => (format!("custom-{index}"), t.to_string()),
        };
        let p = Self { id, template };
        p.fields().map_err(|e| anyhow::anyhow!("--prompt {value:?}: {e}"))?;
        Ok(p)
    }

    /// The `{field}` names the template uses.
    pub fn fields(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut rest = self.template.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| anyhow::anyhow!("an unclosed `{{` in the template"))?;
            let name = &after[..close];
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                anyhow::bail!("`{{{name}}}` is not a field name (letters, digits and _)");
            }
            out.push(name.to_string());
            rest = &after[close + 1..];
        }
        Ok(out)
    }

    /// The instruction for one sample: each `{field}` replaced by the sample's value. A sample without
    /// a field the template needs gets an error naming it; `with-alt` on a sample with an empty source
    /// caption falls back to the paper's prompt (the returned id says which was used).
    pub fn render(&self, key: &str, alt: &str, meta: &serde_json::Value) -> Result<(String, String), String> {
        if self.id == "with-alt" && alt.trim().is_empty() {
            return Ok(("paper".into(), PAPER.into()));
        }
        let mut text = self.template.clone();
        for name in self.fields().map_err(|e| e.to_string())? {
            let value = match name.as_str() {
                "alt" => alt.trim().to_string(),
                "key" => key.to_string(),
                other => match meta.get(other) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => {
                        return Err(format!("prompt field `{other}`: the sample's .json has no such field"))
                    }
                    Some(v) => v.to_string(),
                },
            };
            text = text.replace(&format!("{{{name}}}"), &value);
        }
        Ok((self.id.clone(), text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_fields_and_name_what_is_missing() {
        let meta = serde_json::json!({"width": 640, "url": "http://x/y.jpg", "gone": null});
        let p = Prompt::parse("A {width} px photo from {url}, key {key}: {alt}", 0).unwrap();
        assert_eq!(p.id, "custom-0");
        let (_, t) = p.render("000001", " a cat ", &meta).unwrap();
        assert_eq!(t, "A 640 px photo from http://x/y.jpg, key 000001: a cat");
        let q = Prompt::parse("{gone}", 1).unwrap();
        assert!(q.render("k", "", &meta).unwrap_err().contains("`gone`"));
        assert!(Prompt::parse("{not closed", 0).unwrap_err().to_string().contains("unclosed"));
        let alt = Prompt::parse("with-alt", 0).unwrap();
        assert_eq!(alt.render("k", "", &meta).unwrap(), ("paper".into(), PAPER.into()));
        let (id, t) = alt.render("k", "a dog", &meta).unwrap();
        assert_eq!(
            (id.as_str(), t.as_str()),
            ("with-alt", "Given the caption of this image \"a dog\", describe this image in a very detailed manner")
        );
    }
}
