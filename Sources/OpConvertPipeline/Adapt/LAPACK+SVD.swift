import COpenBLAS
import Foundation
import OpConvertCore

/// A dense f64 matrix in column-major order (LAPACK's layout). A row-major [rows, cols]
/// tensor read as it lies in memory is the column-major transpose, [cols, rows].
package struct Matrix: Sendable {
    package var rows: Int
    package var cols: Int
    package var values: [Double]

    package init(rows: Int, cols: Int, values: [Double]) {
        self.rows = rows
        self.cols = cols
        self.values = values
    }

    package init(zeros rows: Int, _ cols: Int) {
        self.init(rows: rows, cols: cols, values: [Double](repeating: 0, count: rows * cols))
    }

    package subscript(i: Int, j: Int) -> Double {
        get { values[i + j * rows] }
        set { values[i + j * rows] = newValue }
    }

    /// Columns lo..<hi as a new matrix (contiguous in column-major order).
    package func columns(_ range: Range<Int>) -> Matrix {
        Matrix(rows: rows, cols: range.count, values: Array(values[(range.lowerBound * rows)..<(range.upperBound * rows)]))
    }

    /// Rows lo..<hi as a new matrix.
    package func rowSlice(_ range: Range<Int>) -> Matrix {
        var out = Matrix(zeros: range.count, cols)
        for j in 0..<cols { for i in range { out[i - range.lowerBound, j] = self[i, j] } }
        return out
    }

    package var transposed: Matrix {
        var out = Matrix(zeros: cols, rows)
        for j in 0..<cols { for i in 0..<rows { out.values[j + i * cols] = values[i + j * rows] } }
        return out
    }

    package var frobeniusSquared: Double { values.reduce(0) { $0 + $1 * $1 } }

    /// op(self) · op(other) with cblas_dgemm.
    package func times(_ other: Matrix, transposeSelf: Bool = false, transposeOther: Bool = false) -> Matrix {
        let m = transposeSelf ? cols : rows
        let k = transposeSelf ? rows : cols
        let n = transposeOther ? other.rows : other.cols
        var out = Matrix(zeros: m, n)
        if m == 0 || n == 0 || k == 0 { return out }
        values.withUnsafeBufferPointer { a in
            other.values.withUnsafeBufferPointer { b in
                out.values.withUnsafeMutableBufferPointer { c in
                    cblas_dgemm(CblasColMajor, transposeSelf ? CblasTrans : CblasNoTrans, transposeOther ? CblasTrans : CblasNoTrans,
                                Int32(m), Int32(n), Int32(k), 1, a.baseAddress, Int32(max(rows, 1)),
                                b.baseAddress, Int32(max(other.rows, 1)), 0, c.baseAddress, Int32(max(m, 1)))
                }
            }
        }
        return out
    }
}

/// A LAPACK routine reported a failure: info < 0 is an argument opconvert got wrong, info > 0
/// a factorization that did not converge. Both name the module being factorized.
package struct LAPACKError: CategorizedError {
    package var routine: String
    package var info: Int32
    package var module: String

    package var description: String {
        info < 0
            ? "module \(module): LAPACK \(routine) rejected argument \(-info) (internal error)"
            : "module \(module): LAPACK \(routine) did not converge (info = \(info)); the matrix may hold NaN or Inf values"
    }

    package var category: ErrorCategory { info < 0 ? .internal : .malformedInput }
}

/// LAPACK's divide-and-conquer SVD (dgesdd), thin form: A = U·diag(S)·Vᵀ with
/// k = min(rows, cols) singular values, largest first.
package struct SVD: Sendable {
    package var u: Matrix
    package var s: [Double]
    package var vt: Matrix

    package init(_ a: Matrix, module: String) throws {
        let m = a.rows, n = a.cols, k = min(m, n)
        u = Matrix(zeros: m, k)
        vt = Matrix(zeros: k, n)
        s = [Double](repeating: 0, count: k)
        if k == 0 { return }
        guard a.values.allSatisfy(\.isFinite) else { throw LAPACKError(routine: "dgesdd", info: 1, module: module) }
        var work = a.values
        var jobz = Int8(UInt8(ascii: "S"))
        var mm = Int32(m), nn = Int32(n), lda = Int32(m), ldu = Int32(m), ldvt = Int32(k), info: Int32 = 0
        var iwork = [Int32](repeating: 0, count: 8 * k)
        var query = 0.0, lwork: Int32 = -1
        // Workspace query first, then the factorization with the size LAPACK asked for.
        dgesdd_(&jobz, &mm, &nn, &work, &lda, &s, &u.values, &ldu, &vt.values, &ldvt, &query, &lwork, &iwork, &info)
        guard info == 0 else { throw LAPACKError(routine: "dgesdd", info: info, module: module) }
        lwork = Int32(query.rounded(.up))
        var scratch = [Double](repeating: 0, count: max(Int(lwork), 1))
        dgesdd_(&jobz, &mm, &nn, &work, &lda, &s, &u.values, &ldu, &vt.values, &ldvt, &scratch, &lwork, &iwork, &info)
        guard info == 0 else { throw LAPACKError(routine: "dgesdd", info: info, module: module) }
    }
}

/// The thin QR factorization of a tall matrix (rows >= cols) with LAPACK's dgeqrf and
/// dorgqr: A = Q·R, Q [rows, cols] with orthonormal columns, R [cols, cols] upper triangular.
package struct ThinQR: Sendable {
    package var q: Matrix
    package var r: Matrix

    package init(_ a: Matrix, module: String) throws {
        let m = a.rows, n = a.cols
        guard m >= n else { throw LAPACKError(routine: "dgeqrf", info: -1, module: module) }
        q = a
        r = Matrix(zeros: n, n)
        if n == 0 { return }
        var mm = Int32(m), nn = Int32(n), lda = Int32(m), info: Int32 = 0
        var tau = [Double](repeating: 0, count: n)
        var query = 0.0, lwork: Int32 = -1
        dgeqrf_(&mm, &nn, &q.values, &lda, &tau, &query, &lwork, &info)
        guard info == 0 else { throw LAPACKError(routine: "dgeqrf", info: info, module: module) }
        lwork = Int32(query.rounded(.up))
        var work = [Double](repeating: 0, count: max(Int(lwork), 1))
        dgeqrf_(&mm, &nn, &q.values, &lda, &tau, &work, &lwork, &info)
        guard info == 0 else { throw LAPACKError(routine: "dgeqrf", info: info, module: module) }
        for j in 0..<n { for i in 0...j { r[i, j] = q[i, j] } }
        lwork = -1
        dorgqr_(&mm, &nn, &nn, &q.values, &lda, &tau, &query, &lwork, &info)
        guard info == 0 else { throw LAPACKError(routine: "dorgqr", info: info, module: module) }
        lwork = Int32(query.rounded(.up))
        work = [Double](repeating: 0, count: max(Int(lwork), 1))
        dorgqr_(&mm, &nn, &nn, &q.values, &lda, &tau, &work, &lwork, &info)
        guard info == 0 else { throw LAPACKError(routine: "dorgqr", info: info, module: module) }
    }
}

/// A seeded SplitMix64 stream with Box-Muller normals: the randomized SVD's test matrix is
/// the same for the same --seed on every machine.
package struct GaussianStream: Sendable {
    private var state: UInt64

    package init(seed: UInt64) { state = seed }

    private mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    package mutating func normal() -> Double {
        let u1 = max(Double(next() >> 11) / Double(1 << 53), 1e-300)
        let u2 = Double(next() >> 11) / Double(1 << 53)
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }

    package mutating func matrix(rows: Int, cols: Int) -> Matrix {
        var m = Matrix(zeros: rows, cols)
        for i in 0..<m.values.count { m.values[i] = normal() }
        return m
    }
}

/// Truncated SVDs of a matrix, as `extract`, `resize` and `combine --method svd` use them.
package enum TruncatedSVD {
    /// Randomized SVD (Halko, Martinsson, Tropp 2011, algorithms 4.4 and 5.1): a Gaussian
    /// test matrix with `rank + oversample` columns, `powerIterations` rounds of
    /// M·Mᵀ with a QR after every product (so small singular values are not lost to
    /// rounding), then the exact SVD of the small projected matrix. Returns the leading
    /// `rank` triplets. Falls back to the exact SVD when the sketch would be as wide as
    /// the matrix.
    package static func randomized(_ m: Matrix, rank: Int, oversample: Int, powerIterations: Int, seed: UInt64,
                                   module: String) throws -> SVD {
        let width = rank + oversample
        if width >= min(m.rows, m.cols) { return try exact(m, rank: rank, module: module) }
        var gauss = GaussianStream(seed: seed)
        let omega = gauss.matrix(rows: m.cols, cols: width)
        var q = try ThinQR(m.times(omega), module: module).q
        for _ in 0..<powerIterations {
            let z = try ThinQR(m.times(q, transposeSelf: true), module: module).q
            q = try ThinQR(m.times(z), module: module).q
        }
        // B = Qᵀ·M is small: [width, cols]; its SVD gives M ≈ (Q·U_B)·S·Vᵀ.
        let small = try SVD(q.times(m, transposeSelf: true), module: module)
        var out = small
        out.u = q.times(small.u)
        return truncate(out, rank)
    }

    /// LAPACK's full SVD truncated to `rank`.
    package static func exact(_ m: Matrix, rank: Int, module: String) throws -> SVD {
        truncate(try SVD(m, module: module), rank)
    }

    static func truncate(_ svd: SVD, _ rank: Int) -> SVD {
        let k = min(rank, svd.s.count)
        return SVD(u: svd.u.columns(0..<k), s: Array(svd.s.prefix(k)), vt: svd.vt.rowSlice(0..<k))
    }

    /// The smallest rank whose leading singular values keep at least `fraction` of the
    /// squared Frobenius norm (sum of all s²); at least 1 for a non-zero matrix.
    package static func rank(forEnergy fraction: Double, singularValues s: [Double]) -> Int {
        let total = s.reduce(0) { $0 + $1 * $1 }
        guard total > 0 else { return 0 }
        var kept = 0.0
        for (i, v) in s.enumerated() {
            kept += v * v
            if kept >= fraction * total * (1 - 1e-12) { return i + 1 }
        }
        return s.count
    }
}

extension SVD {
    package init(u: Matrix, s: [Double], vt: Matrix) {
        self.u = u
        self.s = s
        self.vt = vt
    }
}
