// Errors the runtime raises. Bindings map FormatError to a Python ValueError subclass.
#pragma once
#include <stdexcept>
#include <string>

namespace owl {

// Anything wrong with user input: a malformed file, an unknown key, a prompt past the context.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A file (GGUF, vocabulary) that is malformed or hostile; the message names the offending key/tensor/offset.
struct FormatError : Error {
    using Error::Error;
};

}  // namespace owl
