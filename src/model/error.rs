//! Error type of the Mask R-CNN model.

/// Errors raised while building or running the Mask R-CNN model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A libtorch operation failed (shape mismatch, out of memory, …).
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
    /// The configuration cannot be turned into a model.
    #[error("invalid Mask R-CNN config: {0}")]
    InvalidConfig(String),
    /// Images or targets passed to the model do not satisfy its contract.
    #[error("invalid model input: {0}")]
    InvalidInput(String),
}

/// Result alias used by the model modules.
pub type Result<T> = std::result::Result<T, ModelError>;
