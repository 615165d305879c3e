//! A test fixture built against `cascade:filter@0.1.0` (`wit/`, the contract
//! as the foundation shipped it, before the edge capabilities). A host of a
//! later 0.1 version must still load and run it. It uses wit-bindgen
//! directly, since the SDK follows the current contract.

wit_bindgen::generate!({ path: "wit", world: "filter" });

struct Contract;

impl Guest for Contract {
    fn check_config() -> Result<(), String> {
        Ok(())
    }

    fn on_request(request: &Request) -> Verdict {
        request.set_header("x-contract", "0.1.0").expect("a short, valid header");
        Verdict::Continue
    }

    fn on_response(response: &Response) {
        response.set_header("x-contract", "0.1.0").expect("a short, valid header");
    }
}

export!(Contract);
