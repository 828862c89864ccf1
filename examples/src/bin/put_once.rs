//! Passing a large array to many tasks: by value (stored again for every
//! task) versus `put` once and passed by reference (stored once). A plain
//! `Vec<f64>` travels as one copy of its memory either way; a [`Buffer`] is
//! read in place from shared memory, with no copy at all. The usage guide
//! shows Ray at 1.08 s by value and 0.13 s by reference for this program.
//!
//! Run: `cargo run --release -p rayforge-examples --bin put_once`

use std::time::Instant;

use rayforge::{Buffer, Config, ObjectRef};

/// Reads the matrix and returns one number, like a task that summarises it.
#[rayforge::remote]
fn column_sum(matrix: Vec<f64>, cols: usize, col: usize) -> f64 {
    matrix.iter().skip(col).step_by(cols).sum()
}

/// The same, reading the matrix in place in shared memory.
#[rayforge::remote]
fn column_sum_in_place(matrix: Buffer<f64>, cols: usize, col: usize) -> f64 {
    matrix.iter().skip(col).step_by(cols).sum()
}

#[rayforge::main]
fn main() -> rayforge::Result<()> {
    rayforge::init(Config::default())?;
    let (rows, cols) = (5000usize, 5000usize);
    let matrix = vec![1.0f64; rows * cols]; // 200 MB
    let tasks = 10;

    let start = Instant::now();
    let by_value: Vec<ObjectRef<f64>> = (0..tasks)
        .map(|i| column_sum::remote(matrix.clone(), cols, i))
        .collect();
    let a = rayforge::get_all(&by_value)?;
    let by_value_time = start.elapsed();

    let start = Instant::now();
    let stored = rayforge::put(matrix.clone())?;
    let by_ref: Vec<ObjectRef<f64>> = (0..tasks).map(|i| column_sum::remote(&stored, cols, i)).collect();
    let b = rayforge::get_all(&by_ref)?;
    let by_ref_time = start.elapsed();

    let start = Instant::now();
    let shared = rayforge::put(Buffer::from(matrix))?;
    let in_place: Vec<ObjectRef<f64>> = (0..tasks)
        .map(|i| column_sum_in_place::remote(&shared, cols, i))
        .collect();
    let c = rayforge::get_all(&in_place)?;
    let in_place_time = start.elapsed();

    assert_eq!(a, b);
    assert_eq!(a, c);
    println!(
        "10 tasks, 5000x5000 f64 passed by value:        {:.3} s",
        by_value_time.as_secs_f64()
    );
    println!(
        "10 tasks, 5000x5000 f64 put once, by reference: {:.3} s",
        by_ref_time.as_secs_f64()
    );
    println!(
        "the same as a Buffer, read in place:            {:.3} s",
        in_place_time.as_secs_f64()
    );
    println!("each task summed a column: {}", a[0]);
    Ok(())
}
