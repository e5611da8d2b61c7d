//! Lavarage decoders (in progress).
