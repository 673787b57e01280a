//! Reading an architecture's hyper-parameters from GGUF metadata, with errors that name the
//! missing or bad key.

use plugin_api::MetadataRef;

/// The metadata of one model, with its `general.architecture` prefix.
pub struct HParams<'m, 'a> {
    meta: &'m MetadataRef<'a>,
    arch: String,
}

impl<'m, 'a> HParams<'m, 'a> {
    pub fn new(meta: &'m MetadataRef<'a>, arch: &str) -> Self {
        HParams {
            meta,
            arch: arch.to_string(),
        }
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.arch)
    }

    /// `<arch>.<name>` as an unsigned integer; missing is an error.
    pub fn u64(&self, name: &str) -> Result<u64, String> {
        let key = self.key(name);
        self.meta
            .get_u64(key.as_str().into())
            .into_option()
            .ok_or_else(|| format!("metadata key '{key}' is missing or not an unsigned integer"))
    }

    /// `<arch>.<name>` as a positive count that fits in `usize`.
    pub fn count(&self, name: &str) -> Result<usize, String> {
        let v = self.u64(name)?;
        if v == 0 || v > (1 << 32) {
            return Err(format!(
                "metadata key '{}' = {v} is out of range",
                self.key(name)
            ));
        }
        Ok(v as usize)
    }

    /// An optional count.
    pub fn count_or(&self, name: &str, default: usize) -> Result<usize, String> {
        match self
            .meta
            .get_u64(self.key(name).as_str().into())
            .into_option()
        {
            None => Ok(default),
            Some(_) => self.count(name),
        }
    }

    /// `<arch>.<name>` as a float, or `default` when absent.
    pub fn f32_or(&self, name: &str, default: f32) -> Result<f32, String> {
        let key = self.key(name);
        match self.meta.get_f64(key.as_str().into()).into_option() {
            None => Ok(default),
            Some(v) if v.is_finite() => Ok(v as f32),
            Some(v) => Err(format!("metadata key '{key}' = {v} is not finite")),
        }
    }

    /// `<arch>.<name>` as a float; missing is an error.
    pub fn f32(&self, name: &str) -> Result<f32, String> {
        let key = self.key(name);
        if self.meta.get_f64(key.as_str().into()).is_none() {
            return Err(format!("metadata key '{key}' is missing or not a number"));
        }
        self.f32_or(name, 0.0)
    }
}
