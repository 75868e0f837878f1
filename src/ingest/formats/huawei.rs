//! Placeholder: the huawei parsers are being written.

use crate::ingest::Batch;
use crate::ingest::formats::{FormatError, ParseContext};

pub fn parse_results(_payload: &[u8], _context: &ParseContext) -> Result<Batch, FormatError> {
    Err(FormatError {
        format: "huawei",
        path: "$".to_owned(),
        message: "not supported yet".to_owned(),
    })
}

pub fn parse_qc(_payload: &[u8], _context: &ParseContext) -> Result<Batch, FormatError> {
    Err(FormatError {
        format: "huawei",
        path: "$".to_owned(),
        message: "not supported yet".to_owned(),
    })
}
