#!/bin/sh
# Push a competing commit to a story branch, as another claimant (or a person) would.
# Usage: compete.sh URL BRANCH BASE EPOCH. The real CLI runs it through its Bash tool in the
# fencing tests, so the push lands while the runner's agent works. An empty EPOCH writes no
# trailers (a push by a person or a tool that knows nothing of claims). Plain sh + git: the
# test uid may not be able to run the test's Python.
set -eu
url=$1 branch=$2 base=$3 epoch=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if git ls-remote --exit-code --heads "$url" "refs/heads/$branch" >/dev/null; then from=$branch; else from=$base; fi
git clone -q --branch "$from" "$url" "$tmp/c"
cd "$tmp/c"
[ "$from" = "$branch" ] || git checkout -q -b "$branch"
echo "pushed by a claimant with epoch $epoch" > competing.txt
git add -A
if [ -n "$epoch" ]; then
    msg=$(printf 'competing work\n\nHuskies-Story: x\nHuskies-Claim-Epoch: %s\nHuskies-Node: other-node\n' "$epoch")
else
    msg="competing work"
fi
git -c user.name=other -c user.email=other@example.invalid commit -q -m "$msg"
git push -q --force "$url" "HEAD:refs/heads/$branch"
echo "pushed a competing commit to $branch"
