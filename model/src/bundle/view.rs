//! A light reading of an ONNX file: its interface, metadata and where its tensors' data lives,
//! without copying the weights. Checking a bundle decodes the file through these messages,
//! which declare only the fields the checks read (protobuf skips the rest), so a 40 MB graph
//! is not held twice while it is checked and handed to an engine.

use crate::onnx::pb;

/// `ModelProto`: the graph and the metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelView {
    /// The main graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphView>,
    /// Key-value metadata (the embedded manifest).
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<pb::StringStringEntryProto>,
}

/// `GraphProto`: nodes, tensors by name, inputs and outputs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphView {
    /// The nodes.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeView>,
    /// The initializers, without their data.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorView>,
    /// Declared inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<pb::ValueInfoProto>,
    /// Declared outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<pb::ValueInfoProto>,
    /// Sparse initializers, without their data.
    #[prost(message, repeated, tag = "15")]
    pub sparse_initializer: Vec<SparseTensorView>,
}

/// `NodeProto`: its name and attributes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeView {
    /// Node name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeView>,
}

/// `AttributeProto`: the tensors and subgraphs an attribute may hold.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeView {
    /// Attribute name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// A tensor value.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorView>,
    /// A subgraph value.
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphView>,
    /// Tensor values.
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorView>,
    /// Subgraph values.
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphView>,
}

/// `TensorProto` without its values: name and where its data lives.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorView {
    /// Tensor name.
    #[prost(string, tag = "8")]
    pub name: String,
    /// Where the data is, when in another file.
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<pb::StringStringEntryProto>,
    /// `EXTERNAL` (1) when the data is in another file.
    #[prost(int32, optional, tag = "14")]
    pub data_location: Option<i32>,
}

/// `SparseTensorProto`: its values' tensor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SparseTensorView {
    /// The values.
    #[prost(message, optional, tag = "1")]
    pub values: Option<TensorView>,
}

impl GraphView {
    /// The graph's real inputs: declared inputs that are not initializers (older exporters
    /// list every weight as an input too).
    pub fn image_inputs(&self) -> Vec<&pb::ValueInfoProto> {
        crate::onnx::graph::inputs_besides(&self.input, self.initializer.iter().map(|t| t.name.as_str()))
    }
}
