//! `streams._core.RecordBatchBuilder`: a Kafka record batch (`viralwatch_core::record_batch`)
//! in place of aiokafka's ``BatchBuilder`` in the producer's accumulator
//! (`streams.runtime.faust_adapter.Producer.write`): the same methods the accumulator's
//! ``MessageBatch`` and its sender call, the same bytes built, the CRC-32C in hardware.

use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

use viralwatch_core::record_batch::RecordBatch;

/// What aiokafka's builder answers to an append (``offset``, ``size``, ``timestamp``; its
/// ``crc`` is ``None`` in a batch of magic 2): a ``MessageBatch`` resolves a send's future
/// from it.
#[pyclass(module = "streams._core", frozen, get_all)]
pub struct RecordAppended {
    offset: i32,
    size: usize,
    timestamp: i64,
}

#[pymethods]
impl RecordAppended {
    #[getter]
    fn crc(&self) -> Option<u32> {
        None
    }
}

/// A record batch being written for one partition: aiokafka's ``BatchBuilder``'s methods
/// (``append``, ``close``, ``closed``, ``size``, ``record_count``, ``_set_producer_state``,
/// ``_build``), uncompressed; :meth:`write` a record with no answer made.
#[pyclass(module = "streams._core")]
pub struct RecordBatchBuilder {
    batch: RecordBatch,
    /// the bytes built, and the records they hold (the records' copy is dropped then)
    built: Option<(Py<PyBytes>, i32)>,
    closed: bool,
}

/// Now, in ms since the epoch (a record given no timestamp, as aiokafka stamps it).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A key's, value's or header's bytes (``bytes`` or ``bytearray``, as aiokafka takes them)
/// handed to ``f``.
fn with_bytes<R>(
    what: &str,
    b: Option<&Bound<'_, PyAny>>,
    f: impl FnOnce(Option<&[u8]>) -> R,
) -> PyResult<R> {
    match b {
        None => Ok(f(None)),
        Some(b) if b.is_none() => Ok(f(None)),
        Some(b) => {
            if let Ok(b) = b.cast::<PyBytes>() {
                Ok(f(Some(b.as_bytes())))
            } else if let Ok(b) = b.cast::<PyByteArray>() {
                Ok(f(Some(&b.to_vec())))
            } else {
                Err(PyTypeError::new_err(format!(
                    "Not supported type for {what}: {}",
                    b.get_type().name()?
                )))
            }
        }
    }
}

impl RecordBatchBuilder {
    fn add(
        &mut self,
        timestamp: Option<i64>,
        key: Option<&Bound<'_, PyAny>>,
        value: Option<&Bound<'_, PyAny>>,
        headers: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> PyResult<Option<RecordAppended>> {
        if self.closed {
            return Ok(None);
        }
        let ts = timestamp.unwrap_or_else(now_ms);
        let offset = self.batch.count();
        let headers: Vec<(&[u8], Option<&[u8]>)> = headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect();
        let done = with_bytes("key", key, |k| {
            with_bytes("value", value, |v| {
                self.batch.append(offset, ts, k, v, &headers)
            })
        })??;
        match done {
            Some(a) => Ok(Some(RecordAppended {
                offset: a.offset,
                size: a.size,
                timestamp: a.timestamp,
            })),
            None => {
                // full: closed, as aiokafka's builder closes (the next record opens another)
                self.closed = true;
                Ok(None)
            }
        }
    }
}

#[pymethods]
impl RecordBatchBuilder {
    #[new]
    #[pyo3(signature = (batch_size, is_transactional=false))]
    fn new(batch_size: usize, is_transactional: bool) -> Self {
        Self {
            batch: RecordBatch::new(batch_size, is_transactional),
            built: None,
            closed: false,
        }
    }

    /// Add a record (aiokafka's ``BatchBuilder.append``): its metadata, or ``None`` when
    /// the batch is full or closed. ``timestamp`` in ms (``None``: now).
    #[pyo3(signature = (*, timestamp, key, value, headers=None))]
    fn append(
        &mut self,
        timestamp: Option<i64>,
        key: Option<Bound<'_, PyAny>>,
        value: Option<Bound<'_, PyAny>>,
        headers: Option<Vec<(String, Option<Vec<u8>>)>>,
    ) -> PyResult<Option<RecordAppended>> {
        let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = headers
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v))
            .collect();
        self.add(timestamp, key.as_ref(), value.as_ref(), &headers)
    }

    /// Add a record with no headers and no answer made: whether it went in (``False``: the
    /// batch is full, or closed). ``value`` ``None`` deletes the key (a tombstone).
    #[pyo3(signature = (timestamp, key, value))]
    fn write(
        &mut self,
        timestamp: Option<i64>,
        key: Bound<'_, PyAny>,
        value: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        Ok(self
            .add(timestamp, Some(&key), value.as_ref(), &[])?
            .is_some())
    }

    /// No more records (a full batch is closed by the append it refused).
    fn close(&mut self) {
        self.closed = true;
    }

    fn closed(&self) -> bool {
        self.closed
    }

    /// The batch's size in bytes, header included.
    fn size(&self, py: Python<'_>) -> usize {
        match &self.built {
            Some((b, _)) => b.bind(py).as_bytes().len(),
            None => self.batch.size(),
        }
    }

    fn record_count(&self) -> i32 {
        self.built.as_ref().map_or(self.batch.count(), |(_, n)| *n)
    }

    /// An idempotent producer's id, epoch and this batch's first sequence (the sender's,
    /// before it builds the batch).
    fn _set_producer_state(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.batch
            .set_producer_state(producer_id, producer_epoch, base_sequence);
    }

    /// The batch's bytes, header and CRC written: closed, built once (a batch retried is
    /// sent as built).
    fn _build(&mut self, py: Python<'_>) -> PyResult<Py<PyBytes>> {
        self.closed = true;
        if let Some((b, _)) = &self.built {
            return Ok(b.clone_ref(py));
        }
        let batch = &self.batch;
        let out = PyBytes::new_with(py, batch.size(), |out| {
            batch.write_into(out);
            Ok(())
        })?
        .unbind();
        self.built = Some((out.clone_ref(py), batch.count()));
        self.batch = RecordBatch::new(0, false);
        Ok(out)
    }
}
