//! The key/value metadata of a GGUF file, in file order, with typed getters.

use super::value::{Array, Value};
use plugin_api::abi_stable::std_types::{ROption, RStr, RString, RVec};
use std::collections::HashMap;

/// The metadata of a GGUF file: keys in file order, each once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// Adds `key`; gives the value back if the key is already present.
    pub fn insert(&mut self, key: String, value: Value) -> Result<(), Value> {
        if self.index.contains_key(&key) {
            return Err(value);
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// Any unsigned integer, or a signed one that is not negative.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// Any integer that fits in i64.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// Any float or integer.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn get_array(&self, key: &str) -> Option<&Array> {
        self.get(key)?.as_array()
    }

    pub fn get_str_array(&self, key: &str) -> Option<&[String]> {
        match self.get_array(key)? {
            Array::String(v) => Some(v),
            _ => None,
        }
    }

    /// Any numeric array, converted to f32.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get_array(key)?.to_f32_vec()
    }

    /// Any integer array whose elements all fit in i64.
    pub fn get_i64_array(&self, key: &str) -> Option<Vec<i64>> {
        self.get_array(key)?.to_i64_vec()
    }

    /// Any numeric array, converted to f64.
    pub fn get_f64_array(&self, key: &str) -> Option<Vec<f64>> {
        self.get_array(key)?.to_f64_vec()
    }

    pub fn get_array_len(&self, key: &str) -> Option<usize> {
        Some(self.get_array(key)?.len())
    }
}

/// The view architecture plugins get (see `plugin_api::arch::Metadata`).
impl plugin_api::Metadata for Metadata {
    fn get_u64(&self, key: RStr<'_>) -> ROption<u64> {
        Metadata::get_u64(self, key.as_str()).into()
    }

    fn get_i64(&self, key: RStr<'_>) -> ROption<i64> {
        Metadata::get_i64(self, key.as_str()).into()
    }

    fn get_f64(&self, key: RStr<'_>) -> ROption<f64> {
        Metadata::get_f64(self, key.as_str()).into()
    }

    fn get_bool(&self, key: RStr<'_>) -> ROption<bool> {
        Metadata::get_bool(self, key.as_str()).into()
    }

    fn get_str(&self, key: RStr<'_>) -> ROption<RString> {
        Metadata::get_str(self, key.as_str())
            .map(RString::from)
            .into()
    }

    fn get_i64_array(&self, key: RStr<'_>) -> ROption<RVec<i64>> {
        Metadata::get_i64_array(self, key.as_str())
            .map(RVec::from)
            .into()
    }

    fn get_f64_array(&self, key: RStr<'_>) -> ROption<RVec<f64>> {
        Metadata::get_f64_array(self, key.as_str())
            .map(RVec::from)
            .into()
    }
}
