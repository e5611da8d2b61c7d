//! The generated `marginoffer.v1` types and service stubs, plus the
//! conversions between them and the domain (see [`convert`]).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("marginoffer.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("marginoffer_descriptor");
}

pub mod convert;
