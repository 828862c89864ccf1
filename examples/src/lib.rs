//! Runnable end-to-end programs for rayforge; see `src/bin/`.
