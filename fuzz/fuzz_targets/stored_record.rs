//! Feeds arbitrary bytes to the decoder of the Warden's stored task records, as read back from
//! a damaged disk. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warden::core::record::TaskRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = TaskRecord::decode(data) {
        // Whatever decodes must encode and decode to the same record.
        let bytes = record.encode().expect("a decoded record encodes");
        assert_eq!(TaskRecord::decode(&bytes).expect("re-encoded record decodes"), record);
    }
});
