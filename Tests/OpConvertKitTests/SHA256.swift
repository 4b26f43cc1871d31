import Foundation
@testable import OpConvertKit

/// Hex SHA-256 of fixture bytes, by the library's own SHA-256 (batch fingerprints use it;
/// its known answers are tested in BatchTests).
func sha256Hex(_ data: UnsafeRawBufferPointer) -> String {
    var h = SHA256()
    h.update(data)
    return SHA256.hex(h.finalize())
}
