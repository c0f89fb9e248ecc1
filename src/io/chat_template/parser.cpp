#include "io/chat_template/parser.h"

#include <algorithm>

#include "io/chat_template/builtins.h"
#include "io/chat_template/unicode.h"

namespace nb::jinja {
namespace {

// Tags of jinja2 (or its extensions) that this renderer does not implement.
const char* const kUnsupportedTags[] = {"include", "import", "from", "extends", "block", "call",
                                        "with", "autoescape", "do", "trans", "pluralize", "endblock"};

ExprPtr make_expr(ExprKind kind, uint32_t pos) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->pos = pos;
  return e;
}

class Parser {
 public:
  Parser(const SourceInfo& src, std::vector<Token> toks) : src_(src), toks_(std::move(toks)) {}

  Result<Body> parse_template() {
    NB_ASSIGN_OR_RETURN(Body body, parse_body({}));
    return body;
  }

 private:
  struct OpenBlock {
    std::string tag;
    uint32_t pos;
    std::vector<std::string> ends;
  };

  // ---- token stream ----
  const Token& cur() const { return toks_[i_]; }
  const Token& peek() const { return toks_[std::min(i_ + 1, toks_.size() - 1)]; }
  void next() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  bool is_op(const char* op) const { return cur().type == Tok::kOp && cur().value == op; }
  bool is_name(const char* n) const { return cur().type == Tok::kName && cur().value == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  Status error(const std::string& message) const { return src_.parse_error(cur().pos, message); }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::kData: return "template data";
      case Tok::kVarBegin: return "begin of print statement '{{'";
      case Tok::kVarEnd: return "end of print statement '}}'";
      case Tok::kBlockBegin: return "begin of statement block '{%'";
      case Tok::kBlockEnd: return "end of statement block '%}'";
      case Tok::kEof: return "end of template";
      case Tok::kString: return "string literal";
      default: return "'" + t.value + "'";
    }
  }
  Status expected(const std::string& what) const { return error("expected " + what + ", got " + describe(cur())); }
  Status expect(Tok type, const char* what) {
    if (cur().type != type) return expected(what);
    next();
    return Status::ok();
  }
  Status expect_op(const char* op) {
    if (!skip_op(op)) return expected(std::string("'") + op + "'");
    return Status::ok();
  }
  Result<std::string> expect_name() {
    if (cur().type != Tok::kName) return expected("a name");
    std::string n = cur().value;
    next();
    return n;
  }

  // ---- statements ----
  Result<Body> parse_body(std::vector<std::string> ends);
  Status parse_statement(Body& out);
  Status parse_if(Stmt& s);
  Status parse_for(Stmt& s);
  Status parse_set(Stmt& s);
  Status parse_macro(Stmt& s);
  Status parse_filter_block(Stmt& s);
  Status unexpected_tag(const std::string& tag) const;
  // Expects `%}`, parses a body up to one of `ends`, leaves the cursor on the end tag's name.
  Result<Body> block_body(const std::string& tag, uint32_t pos, std::vector<std::string> ends) {
    NB_RETURN_IF_ERROR(expect(Tok::kBlockEnd, "end of statement block '%}'"));
    open_.push_back({tag, pos, ends});
    auto body = parse_body(std::move(ends));
    open_.pop_back();
    return body;
  }

  // Bounds the parser's recursion so that "((((...))))" or 10,000 nested ifs are an error, not a
  // stack overflow.
  static constexpr int kMaxDepth = 256;
  struct DepthGuard {
    explicit DepthGuard(int& d) : depth(d) { ++depth; }
    ~DepthGuard() { --depth; }
    int& depth;
  };
  Status check_depth() const {
    if (depth_ > kMaxDepth) return error(strformat("nested more than %d levels deep", kMaxDepth));
    return Status::ok();
  }

  // ---- expressions (jinja2's grammar, loosest binding first) ----
  Result<ExprPtr> parse_tuple(bool with_condexpr = true, const char* extra_end = nullptr, bool explicit_parens = false);
  Result<ExprPtr> parse_expression(bool with_condexpr = true) {
    DepthGuard guard(depth_);
    NB_RETURN_IF_ERROR(check_depth());
    return with_condexpr ? parse_condexpr() : parse_or();
  }
  Result<ExprPtr> parse_condexpr();
  Result<ExprPtr> parse_or();
  Result<ExprPtr> parse_and();
  Result<ExprPtr> parse_not();
  Result<ExprPtr> parse_compare();
  Result<ExprPtr> parse_math1();
  Result<ExprPtr> parse_concat();
  Result<ExprPtr> parse_math2();
  Result<ExprPtr> parse_pow();
  Result<ExprPtr> parse_unary(bool with_filter = true);
  Result<ExprPtr> parse_primary();
  Result<ExprPtr> parse_postfix(ExprPtr node);
  Result<ExprPtr> parse_filter_expr(ExprPtr node);
  Result<ExprPtr> parse_subscript(ExprPtr node);
  Result<ExprPtr> parse_subscribed();
  Status parse_call_args(Expr& call);
  Result<ExprPtr> parse_filter(ExprPtr node, bool start_inline);
  Result<ExprPtr> parse_test(ExprPtr node);
  Result<ExprPtr> parse_list();
  Result<ExprPtr> parse_dict();
  Result<std::vector<std::string>> parse_target_names(bool* is_tuple);

  bool is_tuple_end(const char* extra_end) const {
    if (cur().type == Tok::kVarEnd || cur().type == Tok::kBlockEnd || is_op(")")) return true;
    return extra_end && is_name(extra_end);
  }

  const SourceInfo& src_;
  std::vector<Token> toks_;
  size_t i_ = 0;
  int loop_depth_ = 0;
  int depth_ = 0;
  uint32_t tag_start_ = 0;
  std::vector<OpenBlock> open_;
};

Result<Body> Parser::parse_body(std::vector<std::string> ends) {
  DepthGuard guard(depth_);
  NB_RETURN_IF_ERROR(check_depth());
  Body body;
  while (true) {
    const Token& t = cur();
    if (t.type == Tok::kEof) {
      if (ends.empty()) return body;
      const OpenBlock& b = open_.back();
      std::string want;
      for (size_t k = 0; k < b.ends.size(); ++k) want += (k ? " or '" : "'") + b.ends[k] + "'";
      return src_.parse_error(b.pos, "unclosed '" + b.tag + "' block: reached the end of the template looking for " + want);
    }
    if (t.type == Tok::kData) {
      Stmt s;
      s.kind = StmtKind::kText;
      s.pos = t.pos;
      s.text = t.value;
      body.push_back(std::move(s));
      next();
    } else if (t.type == Tok::kVarBegin) {
      Stmt s;
      s.kind = StmtKind::kOutput;
      s.pos = t.pos;
      next();
      NB_ASSIGN_OR_RETURN(s.expr, parse_tuple(true));
      NB_RETURN_IF_ERROR(expect(Tok::kVarEnd, "end of print statement '}}'"));
      body.push_back(std::move(s));
    } else if (t.type == Tok::kBlockBegin) {
      tag_start_ = t.pos;
      next();
      if (cur().type == Tok::kName && std::find(ends.begin(), ends.end(), cur().value) != ends.end()) return body;
      NB_RETURN_IF_ERROR(parse_statement(body));
      NB_RETURN_IF_ERROR(expect(Tok::kBlockEnd, "end of statement block '%}'"));
    } else {
      return error("unexpected " + describe(t));
    }
  }
}

Status Parser::unexpected_tag(const std::string& tag) const {
  if (open_.empty()) return error("unexpected tag '" + tag + "': no block is open");
  const OpenBlock& b = open_.back();
  std::string want;
  for (size_t k = 0; k < b.ends.size(); ++k) want += (k ? " or '" : "'") + b.ends[k] + "'";
  return error("unexpected tag '" + tag + "': the innermost open block is '" + b.tag + "' (" + src_.line_column(b.pos) +
               "), expecting " + want);
}

Status Parser::parse_statement(Body& out) {
  if (cur().type != Tok::kName) return expected("a tag name");
  std::string tag = cur().value;
  Stmt s;
  s.pos = tag_start_;  // the tag's "{%", where "unclosed block" errors point
  if (tag == "if") NB_RETURN_IF_ERROR(parse_if(s));
  else if (tag == "for") NB_RETURN_IF_ERROR(parse_for(s));
  else if (tag == "set") NB_RETURN_IF_ERROR(parse_set(s));
  else if (tag == "macro") NB_RETURN_IF_ERROR(parse_macro(s));
  else if (tag == "filter") NB_RETURN_IF_ERROR(parse_filter_block(s));
  else if (tag == "break" || tag == "continue") {
    if (loop_depth_ == 0) return error("'" + tag + "' outside of a for loop");
    s.kind = tag == "break" ? StmtKind::kBreak : StmtKind::kContinue;
    next();
  } else if (tag == "print") {
    next();
    s.kind = StmtKind::kOutput;
    NB_ASSIGN_OR_RETURN(s.expr, parse_tuple(true));
  } else if (tag == "generation") {
    // transformers' AssistantTracker only marks assistant spans; the body renders as a call block.
    s.kind = StmtKind::kGeneration;
    next();
    int saved_depth = loop_depth_;
    loop_depth_ = 0;
    auto body = block_body(tag, s.pos, {"endgeneration"});
    loop_depth_ = saved_depth;
    NB_RETURN_IF_ERROR(body.status());
    s.body = std::move(body).value();
    next();
  } else if (std::find(std::begin(kUnsupportedTags), std::end(kUnsupportedTags), tag) != std::end(kUnsupportedTags)) {
    return error("unsupported tag '" + tag + "'");
  } else if (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif") {
    return unexpected_tag(tag);
  } else {
    return error("unknown tag '" + tag + "'");
  }
  out.push_back(std::move(s));
  return Status::ok();
}

Status Parser::parse_if(Stmt& s) {
  s.kind = StmtKind::kIf;
  std::string tag = "if";
  next();
  while (true) {
    NB_ASSIGN_OR_RETURN(ExprPtr test, parse_tuple(false));
    NB_ASSIGN_OR_RETURN(Body body, block_body(tag, s.pos, {"elif", "else", "endif"}));
    s.branches.emplace_back(std::move(test), std::move(body));
    std::string end = cur().value;
    next();
    if (end == "elif") continue;
    if (end == "else") {
      NB_ASSIGN_OR_RETURN(s.else_body, block_body(tag, s.pos, {"endif"}));
      next();
    }
    return Status::ok();
  }
}

// Names of an assignment target: `x`, `a, b` or `(a, b)`.
Result<std::vector<std::string>> Parser::parse_target_names(bool* is_tuple) {
  std::vector<std::string> names;
  bool parens = skip_op("(");
  *is_tuple = parens;
  while (true) {
    NB_ASSIGN_OR_RETURN(std::string n, expect_name());
    names.push_back(n);
    if (!skip_op(",")) break;
    *is_tuple = true;
    if (cur().type != Tok::kName) break;  // trailing comma
  }
  if (parens) NB_RETURN_IF_ERROR(expect_op(")"));
  return names;
}

Status Parser::parse_for(Stmt& s) {
  s.kind = StmtKind::kFor;
  next();
  NB_ASSIGN_OR_RETURN(s.targets, parse_target_names(&s.target_is_tuple));
  if (!skip_name("in")) return expected("'in'");
  NB_ASSIGN_OR_RETURN(s.expr, parse_tuple(false, "recursive"));
  if (skip_name("if")) {
    NB_ASSIGN_OR_RETURN(s.cond, parse_expression());
  }
  if (is_name("recursive")) return error("unsupported: recursive for loops");
  ++loop_depth_;
  auto body = block_body("for", s.pos, {"endfor", "else"});
  --loop_depth_;
  NB_RETURN_IF_ERROR(body.status());
  s.body = std::move(body).value();
  if (cur().value == "else") {
    next();
    NB_ASSIGN_OR_RETURN(s.else_body, block_body("for", s.pos, {"endfor"}));
  }
  next();
  return Status::ok();
}

Status Parser::parse_set(Stmt& s) {
  next();
  if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().value == ".") {
    // {% set ns.attr = ... %}
    s.targets.push_back(cur().value);
    next();
    next();
    NB_ASSIGN_OR_RETURN(std::string attr, expect_name());
    s.targets.push_back(attr);
    s.ns_target = true;
  } else {
    NB_ASSIGN_OR_RETURN(s.targets, parse_target_names(&s.target_is_tuple));
  }
  if (skip_op("=")) {
    s.kind = StmtKind::kSet;
    NB_ASSIGN_OR_RETURN(s.expr, parse_tuple(true));
    return Status::ok();
  }
  if (s.target_is_tuple) return expected("'='");
  s.kind = StmtKind::kSetBlock;
  if (is_op("|")) {
    NB_ASSIGN_OR_RETURN(s.expr, parse_filter(nullptr, false));
  }
  NB_ASSIGN_OR_RETURN(s.body, block_body("set", s.pos, {"endset"}));
  next();
  return Status::ok();
}

Status Parser::parse_macro(Stmt& s) {
  s.kind = StmtKind::kMacro;
  next();
  NB_ASSIGN_OR_RETURN(s.name, expect_name());
  NB_RETURN_IF_ERROR(expect_op("("));
  while (!is_op(")")) {
    if (!s.params.empty()) NB_RETURN_IF_ERROR(expect_op(","));
    NB_ASSIGN_OR_RETURN(std::string p, expect_name());
    s.params.push_back(p);
    if (skip_op("=")) {
      NB_ASSIGN_OR_RETURN(ExprPtr d, parse_expression());
      s.defaults.push_back(std::move(d));
    } else if (!s.defaults.empty()) {
      return error("non-default argument follows default argument");
    }
  }
  next();
  int saved_depth = loop_depth_;
  loop_depth_ = 0;  // a macro body is a function: break / continue do not reach the caller's loop
  auto body = block_body("macro", s.pos, {"endmacro"});
  loop_depth_ = saved_depth;
  NB_RETURN_IF_ERROR(body.status());
  s.body = std::move(body).value();
  next();
  return Status::ok();
}

Status Parser::parse_filter_block(Stmt& s) {
  s.kind = StmtKind::kFilterBlock;
  next();
  NB_ASSIGN_OR_RETURN(s.expr, parse_filter(nullptr, true));
  NB_ASSIGN_OR_RETURN(s.body, block_body("filter", s.pos, {"endfilter"}));
  next();
  return Status::ok();
}

// ---- expressions -----------------------------------------------------------------------------

Result<ExprPtr> Parser::parse_tuple(bool with_condexpr, const char* extra_end, bool explicit_parens) {
  uint32_t pos = cur().pos;
  std::vector<ExprPtr> items;
  bool is_tuple = false;
  while (true) {
    if (!items.empty()) NB_RETURN_IF_ERROR(expect_op(","));
    if (is_tuple_end(extra_end)) break;
    NB_ASSIGN_OR_RETURN(ExprPtr e, parse_expression(with_condexpr));
    items.push_back(std::move(e));
    if (is_op(",")) is_tuple = true;
    else break;
  }
  if (!is_tuple) {
    if (!items.empty()) return std::move(items[0]);
    if (!explicit_parens) return expected("an expression");
  }
  ExprPtr t = make_expr(ExprKind::kTuple, pos);
  t->args = std::move(items);
  return t;
}

Result<ExprPtr> Parser::parse_condexpr() {
  DepthGuard guard(depth_);
  NB_RETURN_IF_ERROR(check_depth());
  NB_ASSIGN_OR_RETURN(ExprPtr expr1, parse_or());
  while (is_name("if")) {
    uint32_t pos = cur().pos;
    next();
    NB_ASSIGN_OR_RETURN(ExprPtr test, parse_or());
    ExprPtr otherwise;
    if (skip_name("else")) {
      NB_ASSIGN_OR_RETURN(otherwise, parse_condexpr());
    }
    ExprPtr c = make_expr(ExprKind::kCond, pos);
    c->args.push_back(std::move(expr1));
    c->args.push_back(std::move(test));
    c->args.push_back(std::move(otherwise));
    expr1 = std::move(c);
  }
  return expr1;
}

Result<ExprPtr> Parser::parse_or() {
  NB_ASSIGN_OR_RETURN(ExprPtr left, parse_and());
  while (is_name("or")) {
    uint32_t pos = cur().pos;
    next();
    NB_ASSIGN_OR_RETURN(ExprPtr right, parse_and());
    ExprPtr e = make_expr(ExprKind::kOr, pos);
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    left = std::move(e);
  }
  return left;
}

Result<ExprPtr> Parser::parse_and() {
  NB_ASSIGN_OR_RETURN(ExprPtr left, parse_not());
  while (is_name("and")) {
    uint32_t pos = cur().pos;
    next();
    NB_ASSIGN_OR_RETURN(ExprPtr right, parse_not());
    ExprPtr e = make_expr(ExprKind::kAnd, pos);
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    left = std::move(e);
  }
  return left;
}

Result<ExprPtr> Parser::parse_not() {
  DepthGuard guard(depth_);
  NB_RETURN_IF_ERROR(check_depth());
  if (is_name("not")) {
    ExprPtr e = make_expr(ExprKind::kNot, cur().pos);
    next();
    NB_ASSIGN_OR_RETURN(ExprPtr operand, parse_not());
    e->args.push_back(std::move(operand));
    return e;
  }
  return parse_compare();
}

Result<ExprPtr> Parser::parse_compare() {
  uint32_t pos = cur().pos;
  NB_ASSIGN_OR_RETURN(ExprPtr first, parse_math1());
  ExprPtr cmp;
  while (true) {
    std::string op;
    if (cur().type == Tok::kOp && (cur().value == "==" || cur().value == "!=" || cur().value == "<" ||
                                   cur().value == "<=" || cur().value == ">" || cur().value == ">=")) {
      op = cur().value;
      next();
    } else if (skip_name("in")) {
      op = "in";
    } else if (is_name("not") && peek().type == Tok::kName && peek().value == "in") {
      next();
      next();
      op = "notin";
    } else {
      break;
    }
    if (!cmp) {
      cmp = make_expr(ExprKind::kCompare, pos);
      cmp->args.push_back(std::move(first));
    }
    NB_ASSIGN_OR_RETURN(ExprPtr operand, parse_math1());
    cmp->ops.push_back(op);
    cmp->args.push_back(std::move(operand));
  }
  return cmp ? std::move(cmp) : std::move(first);
}

static ExprPtr binary(const std::string& op, uint32_t pos, ExprPtr l, ExprPtr r) {
  ExprPtr e = make_expr(ExprKind::kBinary, pos);
  e->name = op;
  e->args.push_back(std::move(l));
  e->args.push_back(std::move(r));
  return e;
}

Result<ExprPtr> Parser::parse_math1() {
  NB_ASSIGN_OR_RETURN(ExprPtr left, parse_concat());
  while (is_op("+") || is_op("-")) {
    std::string op = cur().value;
    uint32_t pos = cur().pos;
    next();
    NB_ASSIGN_OR_RETURN(ExprPtr right, parse_concat());
    left = binary(op, pos, std::move(left), std::move(right));
  }
  return left;
}

Result<ExprPtr> Parser::parse_concat() {
  NB_ASSIGN_OR_RETURN(ExprPtr left, parse_math2());
  while (is_op("~")) {
    uint32_t pos = cur().pos;
    next();
    NB_ASSIGN_OR_RETURN(ExprPtr right, parse_math2());
    left = binary("~", pos, std::move(left), std::move(right));
  }
  return left;
}

Result<ExprPtr> Parser::parse_math2() {
  NB_ASSIGN_OR_RETURN(ExprPtr left, parse_pow());
  while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
    std::string op = cur().value;
    uint32_t pos = cur().pos;
    next();
    NB_ASSIGN_OR_RETURN(ExprPtr right, parse_pow());
    left = binary(op, pos, std::move(left), std::move(right));
  }
  return left;
}

Result<ExprPtr> Parser::parse_pow() {
  NB_ASSIGN_OR_RETURN(ExprPtr left, parse_unary());
  while (is_op("**")) {
    uint32_t pos = cur().pos;
    next();
    NB_ASSIGN_OR_RETURN(ExprPtr right, parse_unary());
    left = binary("**", pos, std::move(left), std::move(right));
  }
  return left;
}

// Like jinja2, a unary sign binds tighter than filters: `-x|abs` is `(-x)|abs`.
Result<ExprPtr> Parser::parse_unary(bool with_filter) {
  DepthGuard guard(depth_);
  NB_RETURN_IF_ERROR(check_depth());
  ExprPtr node;
  if (is_op("-") || is_op("+")) {
    node = make_expr(is_op("-") ? ExprKind::kNeg : ExprKind::kPos, cur().pos);
    next();
    NB_ASSIGN_OR_RETURN(ExprPtr operand, parse_unary(false));
    node->args.push_back(std::move(operand));
  } else {
    NB_ASSIGN_OR_RETURN(node, parse_primary());
  }
  NB_ASSIGN_OR_RETURN(node, parse_postfix(std::move(node)));
  if (with_filter) {
    NB_ASSIGN_OR_RETURN(node, parse_filter_expr(std::move(node)));
  }
  return node;
}

Result<ExprPtr> Parser::parse_primary() {
  const Token& t = cur();
  ExprPtr node = make_expr(ExprKind::kConst, t.pos);
  if (t.type == Tok::kName) {
    if (t.value == "true" || t.value == "True") node->constant = Value::boolean(true);
    else if (t.value == "false" || t.value == "False") node->constant = Value::boolean(false);
    else if (t.value == "none" || t.value == "None") node->constant = Value::none();
    else {
      node->kind = ExprKind::kName;
      node->name = t.value;
    }
    next();
  } else if (t.type == Tok::kString) {
    std::string s;
    while (cur().type == Tok::kString) {  // adjacent literals concatenate
      s += cur().value;
      next();
    }
    node->constant = Value::string(std::move(s));
  } else if (t.type == Tok::kInt) {
    node->constant = Value::integer(t.int_value);
    next();
  } else if (t.type == Tok::kFloat) {
    node->constant = Value::number(t.float_value);
    next();
  } else if (is_op("(")) {
    next();
    NB_ASSIGN_OR_RETURN(node, parse_tuple(true, nullptr, true));
    NB_RETURN_IF_ERROR(expect_op(")"));
  } else if (is_op("[")) {
    return parse_list();
  } else if (is_op("{")) {
    return parse_dict();
  } else {
    return error("unexpected " + describe(t));
  }
  return node;
}

Result<ExprPtr> Parser::parse_list() {
  ExprPtr node = make_expr(ExprKind::kList, cur().pos);
  next();
  while (!is_op("]")) {
    if (!node->args.empty()) NB_RETURN_IF_ERROR(expect_op(","));
    if (is_op("]")) break;
    NB_ASSIGN_OR_RETURN(ExprPtr item, parse_expression());
    node->args.push_back(std::move(item));
  }
  NB_RETURN_IF_ERROR(expect_op("]"));
  return node;
}

Result<ExprPtr> Parser::parse_dict() {
  ExprPtr node = make_expr(ExprKind::kDict, cur().pos);
  next();
  while (!is_op("}")) {
    if (!node->args.empty()) NB_RETURN_IF_ERROR(expect_op(","));
    if (is_op("}")) break;
    NB_ASSIGN_OR_RETURN(ExprPtr key, parse_expression());
    NB_RETURN_IF_ERROR(expect_op(":"));
    NB_ASSIGN_OR_RETURN(ExprPtr value, parse_expression());
    node->args.push_back(std::move(key));
    node->args.push_back(std::move(value));
  }
  NB_RETURN_IF_ERROR(expect_op("}"));
  return node;
}

Result<ExprPtr> Parser::parse_postfix(ExprPtr node) {
  while (true) {
    if (is_op(".") || is_op("[")) {
      NB_ASSIGN_OR_RETURN(node, parse_subscript(std::move(node)));
    } else if (is_op("(")) {
      ExprPtr call = make_expr(ExprKind::kCall, cur().pos);
      call->args.push_back(std::move(node));
      NB_RETURN_IF_ERROR(parse_call_args(*call));
      node = std::move(call);
    } else {
      return node;
    }
  }
}

Result<ExprPtr> Parser::parse_filter_expr(ExprPtr node) {
  while (true) {
    if (is_op("|")) {
      NB_ASSIGN_OR_RETURN(node, parse_filter(std::move(node), false));
    } else if (is_name("is")) {
      NB_ASSIGN_OR_RETURN(node, parse_test(std::move(node)));
    } else if (is_op("(")) {
      ExprPtr call = make_expr(ExprKind::kCall, cur().pos);
      call->args.push_back(std::move(node));
      NB_RETURN_IF_ERROR(parse_call_args(*call));
      node = std::move(call);
    } else {
      return node;
    }
  }
}

Result<ExprPtr> Parser::parse_subscript(ExprPtr node) {
  uint32_t pos = cur().pos;
  if (skip_op(".")) {
    if (cur().type == Tok::kName) {
      ExprPtr e = make_expr(ExprKind::kGetAttr, pos);
      e->name = cur().value;
      e->args.push_back(std::move(node));
      next();
      return e;
    }
    if (cur().type != Tok::kInt) return expected("a name or number after '.'");
    ExprPtr key = make_expr(ExprKind::kConst, cur().pos);  // x.0 is x[0]
    key->constant = Value::integer(cur().int_value);
    next();
    ExprPtr e = make_expr(ExprKind::kGetItem, pos);
    e->args.push_back(std::move(node));
    e->args.push_back(std::move(key));
    return e;
  }
  next();  // '['
  std::vector<ExprPtr> subs;
  while (!is_op("]")) {
    if (!subs.empty()) NB_RETURN_IF_ERROR(expect_op(","));
    NB_ASSIGN_OR_RETURN(ExprPtr sub, parse_subscribed());
    subs.push_back(std::move(sub));
  }
  NB_RETURN_IF_ERROR(expect_op("]"));
  if (subs.size() == 1 && subs[0]->kind == ExprKind::kSlice) {
    subs[0]->args[0] = std::move(node);
    return std::move(subs[0]);
  }
  for (const ExprPtr& sub : subs)
    if (sub->kind == ExprKind::kSlice) return src_.parse_error(sub->pos, "unsupported: slices inside a tuple subscript");
  ExprPtr e = make_expr(ExprKind::kGetItem, pos);
  e->args.push_back(std::move(node));
  if (subs.size() == 1) {
    e->args.push_back(std::move(subs[0]));
  } else {
    ExprPtr t = make_expr(ExprKind::kTuple, pos);
    t->args = std::move(subs);
    e->args.push_back(std::move(t));
  }
  return e;
}

// One subscript: an expression or a slice [start]:[stop][:[step]]. A slice comes back as kSlice
// whose args[0] (the object) the caller fills in.
Result<ExprPtr> Parser::parse_subscribed() {
  uint32_t pos = cur().pos;
  ExprPtr start;
  if (!is_op(":")) {
    NB_ASSIGN_OR_RETURN(start, parse_expression());
    if (!is_op(":")) return start;
  }
  next();  // ':'
  ExprPtr slice = make_expr(ExprKind::kSlice, pos);
  slice->args.push_back(nullptr);
  slice->args.push_back(std::move(start));
  ExprPtr stop, step;
  if (!is_op(":") && !is_op("]") && !is_op(",")) {
    NB_ASSIGN_OR_RETURN(stop, parse_expression());
  }
  if (skip_op(":") && !is_op("]") && !is_op(",")) {
    NB_ASSIGN_OR_RETURN(step, parse_expression());
  }
  slice->args.push_back(std::move(stop));
  slice->args.push_back(std::move(step));
  return slice;
}

Status Parser::parse_call_args(Expr& call) {
  NB_RETURN_IF_ERROR(expect_op("("));
  bool require_comma = false;
  while (!is_op(")")) {
    if (require_comma) {
      NB_RETURN_IF_ERROR(expect_op(","));
      if (is_op(")")) break;  // trailing comma
    }
    if (is_op("*") || is_op("**")) return error("unsupported: *args / **kwargs in calls");
    if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().value == "=") {
      std::string key = cur().value;
      next();
      next();
      NB_ASSIGN_OR_RETURN(ExprPtr value, parse_expression());
      call.kwargs.emplace_back(key, std::move(value));
    } else {
      if (!call.kwargs.empty()) return error("positional argument follows keyword argument");
      NB_ASSIGN_OR_RETURN(ExprPtr value, parse_expression());
      call.args.push_back(std::move(value));
    }
    require_comma = true;
  }
  next();
  return Status::ok();
}

// `| name[(args)]` repeated; start_inline parses `{% filter name %}` without the leading pipe.
Result<ExprPtr> Parser::parse_filter(ExprPtr node, bool start_inline) {
  while (is_op("|") || start_inline) {
    if (!start_inline) next();
    start_inline = false;
    uint32_t pos = cur().pos;
    NB_ASSIGN_OR_RETURN(std::string name, expect_name());
    while (skip_op(".")) {
      NB_ASSIGN_OR_RETURN(std::string part, expect_name());
      name += "." + part;
    }
    ExprPtr f = make_expr(ExprKind::kFilter, pos);
    f->name = name;
    f->filter = find_filter(name);
    if (!f->filter) return src_.parse_error(pos, "unsupported filter '" + name + "'");
    f->args.push_back(std::move(node));
    if (is_op("(")) NB_RETURN_IF_ERROR(parse_call_args(*f));
    node = std::move(f);
  }
  return node;
}

Result<ExprPtr> Parser::parse_test(ExprPtr node) {
  uint32_t is_pos = cur().pos;
  next();  // 'is'
  bool negated = skip_name("not");
  uint32_t pos = cur().pos;
  NB_ASSIGN_OR_RETURN(std::string name, expect_name());
  while (skip_op(".")) {
    NB_ASSIGN_OR_RETURN(std::string part, expect_name());
    name += "." + part;
  }
  ExprPtr t = make_expr(ExprKind::kTest, pos);
  t->name = name;
  t->test = find_test(name);
  if (!t->test) return src_.parse_error(pos, "unsupported test '" + name + "'");
  t->args.push_back(std::move(node));
  if (is_op("(")) {
    NB_RETURN_IF_ERROR(parse_call_args(*t));
  } else if ((cur().type == Tok::kName || cur().type == Tok::kString || cur().type == Tok::kInt ||
              cur().type == Tok::kFloat || is_op("(") || is_op("[") || is_op("{")) &&
             !is_name("else") && !is_name("or") && !is_name("and")) {
    // `x is divisibleby 3`, `x is sameas none`: one argument without parentheses.
    if (is_name("is")) return error("you cannot chain multiple tests with 'is'");
    NB_ASSIGN_OR_RETURN(ExprPtr arg, parse_primary());
    NB_ASSIGN_OR_RETURN(arg, parse_postfix(std::move(arg)));
    t->args.push_back(std::move(arg));
  }
  if (!negated) return t;
  ExprPtr n = make_expr(ExprKind::kNot, is_pos);
  n->args.push_back(std::move(t));
  return n;
}

}  // namespace

Result<std::shared_ptr<const Program>> parse_program(const std::string& source, const std::string& name) {
  auto program = std::make_shared<Program>();
  program->source.name = name;
  program->source.text = normalize_template_source(source);
  size_t bad = first_invalid_utf8(program->source.text);
  if (bad != std::string::npos)
    return program->source.parse_error(static_cast<uint32_t>(bad), "the template is not valid UTF-8");
  NB_ASSIGN_OR_RETURN(std::vector<Token> tokens, tokenize(program->source));
  Parser parser(program->source, std::move(tokens));
  NB_ASSIGN_OR_RETURN(program->body, parser.parse_template());
  return std::shared_ptr<const Program>(std::move(program));
}

}  // namespace nb::jinja
