//! Chat templates: the models' own templates render every golden conversation exactly as
//! llama.cpp did (data extracted by `tests/data/chat/extract.py`), the built-in defaults, the
//! HF/Python compatibility pieces, and broken templates failing in one line.

use llmhost::chat::{ChatError, ChatTemplate, Message, TemplateSource, CHATML_TEMPLATE};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Case {
    messages: Vec<Message>,
    prompt: String,
}

#[derive(Deserialize)]
struct ModelData {
    architecture: String,
    bos_token: String,
    eos_token: String,
    add_bos: bool,
    add_eos: bool,
    has_template: bool,
    cases: Vec<Case>,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat")
}

fn load(model: &str) -> (ModelData, Option<String>) {
    let dir = data_dir();
    let json = std::fs::read_to_string(dir.join(format!("{model}.json"))).unwrap();
    let data: ModelData = serde_json::from_str(&json).unwrap();
    let template = std::fs::read_to_string(dir.join(format!("{model}.jinja"))).ok();
    assert_eq!(data.has_template, template.is_some(), "{model}");
    (data, template)
}

fn check_golden(model: &str, make: impl Fn(&ModelData, Option<&str>) -> ChatTemplate) {
    let (data, template) = load(model);
    let tmpl = make(&data, template.as_deref());
    tmpl.check().unwrap();
    assert!(!data.cases.is_empty());
    for (i, case) in data.cases.iter().enumerate() {
        let got = tmpl.render(&case.messages, true).unwrap();
        assert_eq!(got, case.prompt, "{model} case {i}");
        // With the model's own BOS/EOS flags, llama.cpp's stripping changes nothing here
        // (SmolLM2's BOS text is "<|im_start|>", but its tokenizer does not add BOS).
        let prompt = tmpl
            .render_prompt(&case.messages, true, data.add_bos, data.add_eos)
            .unwrap();
        assert_eq!(prompt, case.prompt, "{model} case {i} (render_prompt)");
    }
}

#[test]
fn smollm2_renders_like_llama_cpp() {
    check_golden("smollm2-135m-q4_1", |d, t| {
        assert!(t.is_some());
        ChatTemplate::from_gguf_str(t, &d.architecture, &d.bos_token, &d.eos_token)
    });
}

#[test]
fn qwen2_5_coder_renders_like_llama_cpp() {
    check_golden("qwen2.5-coder-0.5b-q4_k_m", |d, t| {
        assert!(t.is_some());
        let tmpl = ChatTemplate::from_gguf_str(t, &d.architecture, &d.bos_token, &d.eos_token);
        assert_eq!(tmpl.origin(), TemplateSource::Gguf);
        tmpl
    });
}

#[test]
fn gemma3_without_template_renders_like_llama_cpp_with_the_chatml_fallback() {
    // Gemma 3 270M's file has no template; llama.cpp falls back to ChatML for it.
    check_golden("gemma3-270m-q4_k_m", |d, t| {
        assert!(t.is_none());
        let tmpl = ChatTemplate::from_gguf_str_llama_cpp(t, &d.bos_token, &d.eos_token);
        assert_eq!(tmpl.origin(), TemplateSource::ChatMl);
        assert_eq!(tmpl.source(), CHATML_TEMPLATE);
        tmpl
    });
}

#[test]
fn without_a_template_other_families_get_chatml() {
    let tmpl = ChatTemplate::from_gguf_str(None, "llama", "<s>", "</s>");
    assert_eq!(tmpl.origin(), TemplateSource::ChatMl);
    let out = tmpl
        .render(&[Message::system("S"), Message::user("Hi")], true)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = tmpl.render(&[Message::user("Hi")], false).unwrap();
    assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n");
    // A blank template counts as none, as in llama.cpp.
    let blank = ChatTemplate::from_gguf_str(Some("  \n"), "qwen2", "", "");
    assert_eq!(blank.origin(), TemplateSource::ChatMl);
}

#[test]
fn gemma_default_is_the_gemma_turn_format() {
    for arch in ["gemma", "gemma2", "gemma3"] {
        let tmpl = ChatTemplate::from_gguf_str(None, arch, "<bos>", "<eos>");
        assert_eq!(tmpl.origin(), TemplateSource::Gemma, "{arch}");
        tmpl.check().unwrap();

        let out = tmpl.render(&[Message::user("What is 2+2?")], true).unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
        );

        // System content goes in front of the first user turn; assistant is "model";
        // contents are trimmed.
        let conversation = [
            Message::system("Be terse."),
            Message::user("  Name two primes. "),
            Message::assistant("2 and 3."),
            Message::user("Two more?"),
        ];
        let out = tmpl.render(&conversation, true).unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe terse.\n\nName two primes.<end_of_turn>\n\
             <start_of_turn>model\n2 and 3.<end_of_turn>\n\
             <start_of_turn>user\nTwo more?<end_of_turn>\n\
             <start_of_turn>model\n"
        );
        let out = tmpl.render(&conversation, false).unwrap();
        assert!(out.ends_with("Two more?<end_of_turn>\n"));

        // llama.cpp drops the leading BOS text when the tokenizer adds BOS itself.
        let prompt = tmpl
            .render_prompt(&[Message::user("Hi")], true, true, false)
            .unwrap();
        assert_eq!(
            prompt,
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );

        // Roles must alternate: the template raises, and that is an error, not a panic.
        let err = tmpl
            .render(&[Message::user("a"), Message::user("b")], true)
            .unwrap_err();
        let ChatError::Template(text) = &err;
        assert!(text.contains("Conversation roles must alternate"), "{err}");
        assert!(!err.to_string().contains('\n'));
    }
}

#[test]
fn python_methods_and_hf_context_work() {
    let src = "{{ bos_token }}{% for m in messages %}{% if m.content.startswith('!') %}\
               [{{ m.content.strip('! ').upper() }}]{% else %}{{ m.role.title() }}: \
               {{ m['content'].strip() }}|{{ m.content.split(' ') | length }}{% endif %}\n\
               {% endfor %}{% if add_generation_prompt %}{{ eos_token }}{% endif %}";
    let tmpl = ChatTemplate::from_source(src, "<s>", "</s>");
    let out = tmpl
        .render(
            &[
                Message::user("  hello big world "),
                Message::user("! shout !"),
            ],
            true,
        )
        .unwrap();
    // trim_blocks: the newline right after `{% endif %}` is dropped, as in HF and llama.cpp.
    assert_eq!(out, "<s>User: hello big world|6[SHOUT]</s>");

    // `render_prompt` strips a trailing EOS when the tokenizer adds one itself.
    let prompt = tmpl
        .render_prompt(&[Message::user("x")], true, true, true)
        .unwrap();
    assert_eq!(prompt, "User: x|1");

    // Loop controls and namespace, as HF enables them.
    let tmpl = ChatTemplate::from_source(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}\
         {% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
        "",
        "",
    );
    let many = vec![Message::user("x"); 5];
    assert_eq!(tmpl.render(&many, false).unwrap(), "2");

    // strftime_now exists and formats the current date.
    let tmpl = ChatTemplate::from_source("{{ strftime_now('%Y') }}", "", "");
    let year = tmpl.render(&[], false).unwrap();
    assert_eq!(year.len(), 4);
    assert!(year.parse::<u32>().unwrap() >= 2024);
}

#[test]
fn tojson_writes_python_json() {
    let tmpl = ChatTemplate::from_source(
        "{{ {'name': 'f', 'n': 1, 'x': 0.5, 'ok': true, 'none': none, 'list': [1, 'a<b'], \
         'empty': {}} | tojson }}|{{ messages[0] | tojson }}|{{ [1, [2]] | tojson(indent=2) }}",
        "",
        "",
    );
    let out = tmpl.render(&[Message::user("é \"q\"\n")], false).unwrap();
    assert_eq!(
        out,
        "{\"name\": \"f\", \"n\": 1, \"x\": 0.5, \"ok\": true, \"none\": null, \
         \"list\": [1, \"a<b\"], \"empty\": {}}\
         |{\"role\": \"user\", \"content\": \"é \\\"q\\\"\\n\"}\
         |[\n  1,\n  [\n    2\n  ]\n]"
    );
}

#[test]
fn broken_templates_fail_in_one_line() {
    // Syntax error: reported by check() and by every render, naming the problem and the line.
    let tmpl = ChatTemplate::from_gguf_str(
        Some("{% for m in messages %}\n{{ m.content }"),
        "llama",
        "",
        "",
    );
    let err = tmpl.check().unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("chat template: syntax error"), "{text}");
    assert!(text.contains("chat_template:2"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert_eq!(tmpl.render(&[Message::user("x")], true).unwrap_err(), err);

    // Errors at render time.
    for (src, needle) in [
        (
            "{{ raise_exception('no system role here') }}",
            "no system role here",
        ),
        ("{{ messages[0].content + 1 }}", "chat_template:1"),
        (
            "{{ messages[0].content.no_such_method() }}",
            "no_such_method",
        ),
        (
            "{% for x in range(10) %}{% for y in x %}{% endfor %}{% endfor %}",
            "chat template:",
        ),
        ("{{ strftime_now('%Q') }}", "strftime_now"),
    ] {
        let tmpl = ChatTemplate::from_source(src, "", "");
        let err = tmpl.render(&[Message::user("x")], true).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(needle), "{src}: {text}");
        assert!(!text.contains('\n'), "{src}: {text}");
    }

    // A runaway template stops (fuel) instead of hanging.
    let tmpl = ChatTemplate::from_source(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "",
        "",
    );
    let err = tmpl.render(&[], false).unwrap_err();
    assert!(!err.to_string().contains('\n'));
}
