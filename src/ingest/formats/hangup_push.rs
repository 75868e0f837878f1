//! Placeholder: the hangup_push parsers are being written.

use crate::ingest::Batch;
use crate::ingest::formats::{FormatError, ParseContext};

pub fn parse(_payload: &[u8], _context: &ParseContext) -> Result<Batch, FormatError> {
    Err(FormatError {
        format: "hangup_push",
        path: "$".to_owned(),
        message: "not supported yet".to_owned(),
    })
}
