//! Reader for PyTorch `pytorch_model.bin` state dicts (a zip holding `data.pkl` and one file per storage),
//! without executing any pickle code. Owned by the `.bin` work (issue 6); until then it reports clearly.

use super::HostTensor;
use crate::error::{Error, Result};
use std::path::Path;

/// All tensors of a state dict, by their state-dict names.
pub fn load_state_dict(path: &Path) -> Result<Vec<HostTensor>> {
    Err(Error::file(path, "PyTorch .bin checkpoints are not supported yet; convert to model.safetensors"))
}
