//! The read-only side of verify: files are read through the `Images` seam ([`ViaImages`]),
//! with [`SystemImages::read_only`] for real files ([`ReadOnlyFile`]): opened `O_RDONLY`.
use std::path::{Path, PathBuf};

use crate::replication::fsops::{FsError, Images, SystemImages};

/// A file read for verification (never written).
pub trait ReadOnly: Send {
    fn size(&mut self) -> Result<u64, FsError>;
    /// Allocated ranges (offset, len), sorted (SEEK_DATA/SEEK_HOLE).
    fn data_ranges(&mut self) -> Result<Vec<(u64, u64)>, FsError>;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FsError>;
}

/// A real file opened `O_RDONLY`.
pub type ReadOnlyFile = ViaImages<SystemImages>;

impl ReadOnlyFile {
    /// Opens `path` read-only now, so a missing file is an error here rather than at the first
    /// read.
    pub fn open(path: &Path) -> Result<Self, FsError> {
        let mut file = ViaImages {
            images: SystemImages::read_only(),
            path: path.to_owned(),
        };
        file.read_at(0, &mut [])?;
        Ok(file)
    }
}

/// A file read through the `Images` seam (for tests with `FakeImages`, a handle).
pub struct ViaImages<I: Images> {
    pub images: I,
    pub path: PathBuf,
}

impl<I: Images> ReadOnly for ViaImages<I> {
    fn size(&mut self) -> Result<u64, FsError> {
        self.images.size(&self.path)
    }
    fn data_ranges(&mut self) -> Result<Vec<(u64, u64)>, FsError> {
        self.images.data_ranges(&self.path)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        self.images.read_at(&self.path, offset, buf)
    }
}
