//! API errors: the pure type is [`keelson_apimachinery::error`]; this module adds the conversion
//! from storage errors, which only the server has.

pub use keelson_apimachinery::error::*;

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Compacted { requested, compacted } => {
                ApiError::Gone { message: format!("too old resource version: {requested} ({compacted})") }
            }
            other => ApiError::internal(other),
        }
    }
}
