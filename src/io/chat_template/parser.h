// Parser for the Jinja subset: jinja2's grammar and operator precedence, statements if / for /
// set / macro / filter / break / continue (loopcontrols) / generation (transformers'
// AssistantTracker, rendered as its body). Unknown filters and tests fail here, like jinja2's
// compile step does, with the line and column of the construct.
#pragma once

#include <memory>
#include <string>

#include "io/chat_template/ast.h"

namespace nb::jinja {

Result<std::shared_ptr<const Program>> parse_program(const std::string& source, const std::string& name);

}  // namespace nb::jinja
