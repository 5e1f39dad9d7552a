"""The issue search language (daemon.events.storage.search): what each construct parses to, that
every input the parser refuses raises SearchError naming the problem and its position, that
unparse() gives text parse() reads back to the same Search, and that parse() on any text
either answers or raises SearchError.

The search box takes whatever a person types, so the error paths matter as much as the
happy ones: a 500 or a silently different query would both be bugs the user sees.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.events.storage.search import (
    IS_VALUES,
    MAX_KEY,
    MAX_QUERY,
    MAX_TERMS,
    SPECIAL_KEYS,
    USER_FIELDS,
    Filter,
    Search,
    SearchError,
    parse,
    unparse,
)


def error(text: str) -> str:
    """The message of the SearchError that parsing `text` raises."""
    with pytest.raises(SearchError) as caught:
        parse(text)
    return str(caught.value)


# --- what each construct reads as ---------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   ", "\t\n "])
def test_blank_text_is_an_empty_search(text: str) -> None:
    assert parse(text) == Search()


def test_free_words_are_split_on_whitespace() -> None:
    assert parse("connection  refused\ttimeout") == Search(
        words=("connection", "refused", "timeout"))


def test_quoted_phrase_is_one_word() -> None:
    assert parse('"connection refused" timeout').words == ("connection refused", "timeout")


def test_quoted_phrase_keeps_colons_and_escaped_quotes() -> None:
    search = parse(r'"key: \"x\" \\ y"')
    assert search.words == ('key: "x" \\ y',)
    assert search.filters == ()


def test_blank_quoted_phrase_adds_nothing() -> None:
    assert parse('"  " word') == Search(words=("word",))


def test_key_value_filter() -> None:
    assert parse("server_name:web-1") == Search(filters=(Filter("server_name", "web-1"),))


def test_filter_keys_are_case_insensitive() -> None:
    assert parse("Browser:Chrome").filters == (Filter("browser", "Chrome"),)


def test_filter_values_keep_their_case() -> None:
    assert parse("release:Shop@1.4.2-RC").filters[0].value == "Shop@1.4.2-RC"


def test_quoted_value_keeps_spaces_and_colons() -> None:
    assert parse('browser:"Chrome 120" url:"http://a/b c"').filters == (
        Filter("browser", "Chrome 120"), Filter("url", "http://a/b c"))


def test_bare_value_may_contain_colons() -> None:
    assert parse("url:http://a.example:8080/x").filters == (
        Filter("url", "http://a.example:8080/x"),)


def test_escaped_quote_inside_quoted_value() -> None:
    assert parse(r'message:"say \"hi\""').filters == (Filter("message", 'say "hi"'),)


def test_backslash_not_before_a_quote_is_literal() -> None:
    assert parse(r'path:"C:\temp\x"').filters == (Filter("path", r"C:\temp\x"),)


def test_words_and_filters_mix_in_any_order() -> None:
    search = parse("timeout level:error db environment:production")
    assert search.words == ("timeout", "db")
    assert search.filters == (Filter("level", "error"), Filter("environment", "production"))


def test_a_word_starting_with_a_colon_is_a_word() -> None:
    assert parse(":8080") == Search(words=(":8080",))


def test_negated_filter() -> None:
    search = parse("!environment:staging environment:production")
    assert search.filters == (Filter("environment", "staging", negated=True),
                              Filter("environment", "production"))
    assert search.values("environment") == ["production"]


def test_bang_before_a_bare_word_is_part_of_the_word() -> None:
    assert parse("!important") == Search(words=("!important",))


def test_a_lone_bang_is_a_word() -> None:
    assert parse("! foo").words == ("!", "foo")


@pytest.mark.parametrize("state", IS_VALUES)
def test_is_states(state: str) -> None:
    assert parse(f"is:{state}").filters == (Filter("is", state),)
    assert parse(f"!is:{state}").filters == (Filter("is", state, negated=True),)


def test_is_value_is_trimmed_inside_quotes() -> None:
    assert parse('is:" resolved "').filters == (Filter("is", "resolved"),)


def test_is_key_is_case_insensitive() -> None:
    assert parse("IS:unresolved").filters == (Filter("is", "unresolved"),)


@pytest.mark.parametrize("key", sorted(USER_FIELDS))
def test_user_keys_are_special_not_tags(key: str) -> None:
    search = parse(f"{key}:someone@example.com")
    assert search.filters == (Filter(key, "someone@example.com"),)
    assert search.filters[0].key in SPECIAL_KEYS


def test_values_collects_every_positive_filter_of_a_key() -> None:
    search = parse("release:a !release:b release:c browser:x")
    assert search.values("release") == ["a", "c"]
    assert search.values("os") == []


def test_exactly_the_term_limit_is_accepted() -> None:
    search = parse(" ".join(f"w{n}" for n in range(MAX_TERMS)))
    assert len(search.words) == MAX_TERMS


def test_exactly_the_length_limit_is_accepted() -> None:
    assert parse("a" * MAX_QUERY).words == ("a" * MAX_QUERY,)


def test_longest_key_is_accepted() -> None:
    assert parse("k" * MAX_KEY + ":v").filters == (Filter("k" * MAX_KEY, "v"),)


# --- what the parser refuses: each message says what and where ----------------------------

def test_too_long() -> None:
    message = error("a" * (MAX_QUERY + 1))
    assert f"longer than {MAX_QUERY} characters" in message


def test_too_many_terms() -> None:
    message = error(" ".join(f"level:l{n}" for n in range(MAX_TERMS + 1)))
    assert f"more than {MAX_TERMS} terms" in message


def test_unterminated_quoted_word() -> None:
    message = error('timeout "connection refused')
    assert "unterminated quote" in message
    assert "position 9" in message          # 1-based, at the opening quote


def test_unterminated_quoted_value() -> None:
    message = error('level:error browser:"Chrome 120')
    assert "unterminated quote" in message
    assert "position 21" in message


def test_escaped_closing_quote_leaves_the_quote_open() -> None:
    assert "position 1" in error(r'"abc\"')


def test_negated_quoted_word() -> None:
    message = error('db !"connection refused"')
    assert "'!' at position 4" in message
    assert "negates filters" in message


def test_key_longer_than_the_limit() -> None:
    key = "k" * (MAX_KEY + 1)
    message = error(f"level:error {key}:v")
    assert "is not a tag name" in message
    assert repr(key) in message
    assert "position 13" in message


def test_filter_without_value_at_the_end() -> None:
    message = error("timeout release:")
    assert "release: needs a value" in message
    assert "position 9" in message


def test_filter_followed_by_space_has_no_value() -> None:
    message = error("release: 1.0")
    assert "release: needs a value at position 1" in message
    assert 'release:"a b"' in message       # tells how to search for spaces


def test_filter_with_empty_quoted_value() -> None:
    assert "environment: needs a value at position 1" in error('environment:""')


def test_negated_filter_position_counts_the_bang() -> None:
    assert "needs a value at position 3" in error("a !release:")


def test_is_with_blank_value() -> None:
    assert "is: needs a value at position 1" in error('is:"  "')


def test_is_with_unknown_state() -> None:
    message = error("db is:open")
    assert "is:open at position 4" in message
    for state in IS_VALUES:
        assert state in message


def test_is_values_are_case_insensitive() -> None:
    assert parse("is:Resolved").filters == (Filter("is", "resolved"),)


def test_quoted_words_count_towards_the_term_limit() -> None:
    with pytest.raises(SearchError):
        parse(" ".join(f'"w{n}"' for n in range(MAX_TERMS + 5)))


@pytest.mark.parametrize("word", ["a\tb", "a\nb", "a\u00a0b"])
def test_unparse_quotes_words_with_any_whitespace(word: str) -> None:
    search = Search(words=(word,))
    assert parse(unparse(search)) == search


# --- unparse -------------------------------------------------------------------------------

def test_unparse_quotes_only_what_needs_it() -> None:
    search = Search(words=("db", "connection refused", "!x", "a:b"),
                    filters=(Filter("browser", "Chrome 120"), Filter("release", "1.0"),
                             Filter("environment", "staging", negated=True)))
    text = unparse(search)
    assert 'browser:"Chrome 120"' in text
    assert "release:1.0" in text
    assert "!environment:staging" in text
    assert '"connection refused"' in text
    assert '"a:b"' in text
    assert parse(text) == search


def test_unparse_escapes_quotes_and_backslashes() -> None:
    search = Search(filters=(Filter("message", 'say "hi" \\o/'),))
    assert parse(unparse(search)) == search


def test_unparse_of_empty_search_is_empty() -> None:
    assert unparse(Search()) == ""


# --- properties ----------------------------------------------------------------------------

def _is_key(key: str) -> bool:
    """A key parse() can give back: no separators, already lowercase, not read as a '!'."""
    return (0 < len(key) <= MAX_KEY and key == key.lower() and not key.startswith("!")
            and key != "is" and not any(c.isspace() or c in ':"' for c in key))


def _is_word(word: str) -> bool:
    # Whitespace other than ' ' is left out: see test_unparse_quotes_words_with_any_whitespace.
    return bool(word.strip()) and not any(c.isspace() and c != " " for c in word)


KEYS = st.sampled_from(["browser", "release", "environment", "level", "server_name",
                        *USER_FIELDS]) | st.text(min_size=1, max_size=12).filter(_is_key)
FILTERS = (st.builds(Filter, KEYS, st.text(min_size=1, max_size=20), st.booleans())
           | st.builds(Filter, st.just("is"), st.sampled_from(IS_VALUES), st.booleans()))
WORDS = st.text(min_size=1, max_size=20).filter(_is_word)
SEARCHES = st.builds(
    Search,
    words=st.lists(WORDS, max_size=MAX_TERMS // 2).map(tuple),
    filters=st.lists(FILTERS, max_size=MAX_TERMS // 2).map(tuple),
).filter(lambda s: len(unparse(s)) <= MAX_QUERY)


@settings(max_examples=200, deadline=None)
@given(SEARCHES)
def test_unparse_parses_back(search: Search) -> None:
    assert parse(unparse(search)) == search


QUERY_TEXT = st.text(max_size=200) | st.text(alphabet='!":\\ \tabis.', max_size=60) | st.lists(
    st.sampled_from(["is:", "!", '"', "\\", ":", " ", "user.email:", "resolved", "a", "x:"]),
    max_size=30).map("".join)


@settings(max_examples=200, deadline=None)
@given(QUERY_TEXT)
def test_parse_answers_or_raises_search_error(text: str) -> None:
    try:
        search = parse(text)
    except SearchError as err:
        assert str(err).startswith("q: ")
        return
    assert isinstance(search, Search)
    for item in search.filters:
        assert item.key and item.value
        assert len(item.key) <= MAX_KEY
        if item.key == "is":
            assert item.value in IS_VALUES
    assert all(word.strip() for word in search.words)
