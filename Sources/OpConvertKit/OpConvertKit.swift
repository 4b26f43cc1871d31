// The umbrella the executable and the tests import: every layer below, re-exported.
@_exported import OpConvertCore
@_exported import OpConvertTensors
@_exported import OpConvertAdapters
@_exported import OpConvertPipeline
@_exported import OpConvertTraining
