// Renders a parsed template with jinja2's runtime semantics: Python truthiness and operators,
// `and` / `or` returning operands, lenient Undefined (prints as "", fails when computed with),
// a fresh scope for every loop iteration (so `set` inside a loop does not leak; namespace() is
// the way out), macros that see the template's top-level variables at call time.
#pragma once

#include <string>

#include "io/chat_template/ast.h"

namespace nb::jinja {

// Errors name the template, line and column; raise_exception() messages come back verbatim.
Result<std::string> render_program(const Program& program, const Dict& context);

}  // namespace nb::jinja
