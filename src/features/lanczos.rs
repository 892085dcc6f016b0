//! Lanczos downsampling and FIR delays (Huth-lab alignment). Being written.
