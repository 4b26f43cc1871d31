import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// A trainable tensor on the device with its gradient and AdamW moments.
package final class Parameter {
    package let name: String
    let shape: [Int]
    package let value: DeviceBuffer
    package let grad: DeviceBuffer
    let m: DeviceBuffer
    let v: DeviceBuffer
    package var count: Int { shape.reduce(1, *) }

    init(_ ctx: KernelContext, name: String, shape: [Int], initial: [Float]) throws {
        self.name = name
        self.shape = shape
        let n = shape.reduce(1, *)
        precondition(initial.count == n, "initial values for \(name)")
        value = try ctx.alloc(count: n)
        grad = try ctx.alloc(count: n)
        m = try ctx.alloc(count: n)
        v = try ctx.alloc(count: n)
        try ctx.upload(initial, to: value)
    }
}
