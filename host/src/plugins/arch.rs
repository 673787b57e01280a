//! The host's safe handle on a loaded architecture plugin.

use super::kernels::PluginCallError;
use plugin_api::abi_stable::sabi_trait::prelude::TD_Opaque;
use plugin_api::abi_stable::std_types::RSlice;
use plugin_api::arch::Metadata_TO;
use plugin_api::{ArchInfo, ArchPluginRef, LoadArgs, Metadata, MetadataRef, ModelBox, TensorRef};
use std::fmt;
use std::path::{Path, PathBuf};

/// A loaded architecture plugin. Cheap to clone; never unloaded.
#[derive(Clone)]
pub struct ArchHandle {
    root: ArchPluginRef,
    info: ArchInfo,
    name: String,
    path: PathBuf,
}

impl fmt::Debug for ArchHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchHandle")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl ArchHandle {
    /// Asks the plugin for its `info()`.
    pub(crate) fn init(
        root: ArchPluginRef,
        name: &str,
        path: &Path,
    ) -> Result<ArchHandle, PluginCallError> {
        let info = root.info()()
            .into_result()
            .map_err(|e| PluginCallError::new(name, "info", &e))?;
        Ok(ArchHandle {
            root,
            info,
            name: name.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The plugin's name, as its manifest says it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn info(&self) -> &ArchInfo {
        &self.info
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it handles this `general.architecture` value.
    pub fn handles(&self, architecture: &str) -> bool {
        self.info
            .architectures
            .iter()
            .any(|a| a.as_str() == architecture)
    }

    /// Builds a model of `architecture` from the file's metadata and tensor table.
    pub fn load<M: Metadata>(
        &self,
        architecture: &str,
        metadata: &M,
        tensors: &[TensorRef<'_>],
    ) -> Result<ModelBox, PluginCallError> {
        let metadata: MetadataRef<'_> = Metadata_TO::from_ptr(metadata, TD_Opaque);
        let f = self.root.load();
        f(LoadArgs {
            architecture: architecture.into(),
            metadata,
            tensors: RSlice::from_slice(tensors),
        })
        .into_result()
        .map_err(|e| PluginCallError::new(&self.name, "load", &e))
    }
}
