//! Placeholder: the task_api parsers are being written.

use crate::ingest::Batch;
use crate::ingest::formats::{FormatError, ParseContext};

pub fn parse_record(_payload: &[u8], _context: &ParseContext) -> Result<Batch, FormatError> {
    Err(FormatError {
        format: "task_api",
        path: "$".to_owned(),
        message: "not supported yet".to_owned(),
    })
}

pub fn parse_call_list(_payload: &[u8], _context: &ParseContext) -> Result<Batch, FormatError> {
    Err(FormatError {
        format: "task_api",
        path: "$".to_owned(),
        message: "not supported yet".to_owned(),
    })
}

pub fn parse_task_numbers(_payload: &[u8], _context: &ParseContext) -> Result<Batch, FormatError> {
    Err(FormatError {
        format: "task_api",
        path: "$".to_owned(),
        message: "not supported yet".to_owned(),
    })
}
