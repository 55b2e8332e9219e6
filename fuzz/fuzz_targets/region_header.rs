//! Fuzz target: arbitrary bytes as a whole region file through
//! `strata_region::format::parse`. It must never panic nor read outside the
//! input; an accepted header must describe layers that lie inside the data
//! section, in order, covering it exactly.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(header) = strata_region::format::parse(Path::new("fuzz.region"), bytes) else {
        return;
    };
    assert_eq!(header.data_start, 8 + header.header_bytes);
    assert_eq!(header.data_start + header.data_bytes, bytes.len() as u64);
    let mut previous_end = 0;
    for layer in &header.layers {
        assert!(layer.begin >= previous_end && layer.begin <= layer.end, "{layer:?}");
        assert!(layer.end <= header.data_bytes, "{layer:?}");
        let elements: u64 = layer.shape.iter().product();
        assert_eq!(elements * layer.dtype.size_bytes(), layer.len_bytes(), "{layer:?}");
        previous_end = layer.end;
    }
});
