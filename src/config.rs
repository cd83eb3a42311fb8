//! Pieces every stage's configuration struct shares: the defaults of a `clap::Args` struct as its
//! `Default` (so a field's default is written once, in its `#[arg]`, and a pipeline section that
//! leaves the field out gets the same value as the command line), and small value types that read
//! the same from a flag and from TOML.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The value of every field of `T` when no flag is given: its `#[arg]` defaults. For structs whose
/// fields all have a default (or are `Option`, `Vec` or `bool`); `impl Default` with it and
/// `#[serde(default)]` on the struct give the pipeline section the command's defaults.
pub fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = cmd.try_get_matches_from(std::iter::empty::<String>()).unwrap_or_else(|e| {
        panic!("{}: a field without a default: {e}", std::any::type_name::<T>());
    });
    T::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{}: {e}", std::any::type_name::<T>()))
}

/// `FIELD=VALUE`: keep only rows whose field has this value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldFilter {
    /// The field or column.
    pub field: String,
    /// The value it must have.
    pub value: String,
}

impl FromStr for FieldFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((f, v)) if !f.trim().is_empty() => Ok(Self { field: f.trim().into(), value: v.into() }),
            _ => Err(format!("expected FIELD=VALUE, found {s:?}")),
        }
    }
}

impl fmt::Display for FieldFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.field, self.value)
    }
}

/// An image size, `WIDTHxHEIGHT` in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageSize {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl ImageSize {
    /// (height, width).
    pub fn hw(self) -> (usize, usize) {
        (self.height, self.width)
    }
}

impl FromStr for ImageSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected WIDTHxHEIGHT in pixels, e.g. 512x512, found {s:?}");
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        Ok(Self { width: w.trim().parse().map_err(|_| bad())?, height: h.trim().parse().map_err(|_| bad())? })
    }
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

macro_rules! as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
as_string!(FieldFilter);
as_string!(ImageSize);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Args, PartialEq)]
    struct Example {
        #[arg(long, default_value_t = 7)]
        n: u32,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        quiet: bool,
    }

    #[test]
    fn defaults_come_from_the_arg_attributes() {
        assert_eq!(clap_defaults::<Example>(), Example { n: 7, name: None, quiet: false });
    }

    #[test]
    fn values_read_from_flags_and_toml_alike() {
        let f: FieldFilter = "category=detail".parse().unwrap();
        assert_eq!((f.field.as_str(), f.value.as_str()), ("category", "detail"));
        assert!("category".parse::<FieldFilter>().unwrap_err().contains("FIELD=VALUE"));
        let s: ImageSize = "512x256".parse().unwrap();
        assert_eq!(s.hw(), (256, 512));
        assert!("big".parse::<ImageSize>().unwrap_err().contains("WIDTHxHEIGHT"));
        #[derive(Deserialize)]
        struct T {
            size: ImageSize,
        }
        let t: T = toml::from_str("size = \"64x32\"").unwrap();
        assert_eq!(t.size.to_string(), "64x32");
    }
}
