// jinja2's filters, tests and globals as transformers configures them (its own `tojson`,
// `raise_exception`, `strftime_now`), the Python methods templates call on str / dict / list,
// and jinja2's sandboxed attribute and item lookup.
#pragma once

#include <string>

#include "io/chat_template/ast.h"

namespace nb::jinja {

// nullptr for a filter or test this renderer does not implement.
FilterFn find_filter(const std::string& name);
TestFn find_test(const std::string& name);

// Globals every template sees: namespace, range, dict, raise_exception, strftime_now.
const Dict& template_globals();

// `obj.name` and `obj[key]` with jinja2's sandbox rules: Python attributes (bound methods) first
// for `.`, items first for `[]`; a missing one is Undefined; mutating methods are refused.
Result<Value> get_attr(const Value& obj, const std::string& name);
Result<Value> get_item(const Value& obj, const Value& key);
// obj[start:stop:step] on str, list and tuple.
Result<Value> get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

// The error jinja2 raises when an Undefined is used for anything but printing, testing and
// iterating.
Status undefined_error(const Value& undefined);

// Items of an iterable as a `for` loop sees them: list items, dict keys, str characters;
// Undefined iterates as empty.
Result<ValueList> iterate(const Value& v);

}  // namespace nb::jinja
