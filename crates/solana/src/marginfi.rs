//! marginfi decoders (in progress).
